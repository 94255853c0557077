//! `audit-db serve`: the HTTP service.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use audit_core::{AuditError, ErrorClass, EventFilter};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

use audit_server::app::{App, Client};

/// Arguments of `audit-db serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "AUDIT_DB_LISTEN")]
    pub listen: SocketAddr,
}

struct AppState {
    client: Client,
    metrics: PrometheusHandle,
}

/// Runs the service until interrupted.
pub async fn run(app: App, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    app.migrate().await?;
    let client = app.client().await?;
    // Optional periodic sealing of every organisation's log.
    let _checkpointer = match (app.config.integrity.checkpoint_interval_secs, &app.config.integrity.signing_key_file) {
        (Some(secs), Some(key)) => {
            let text = std::fs::read_to_string(key)?;
            let signer = audit_core::integrity::NoteSigner::parse(text.trim())?;
            tracing::info!(every_s = secs, "sealing every log periodically");
            Some(audit_client::integrity::spawn_checkpointer(
                app.url.clone(),
                signer,
                std::time::Duration::from_secs(secs.max(1)),
            ))
        }
        (Some(_), None) => anyhow::bail!("integrity.checkpointIntervalSecs needs AUDIT_DB_SIGNING_KEY_FILE"),
        _ => None,
    };
    // Optional background partition maintenance (premake + retention + analysis under the advisory lock).
    let _maintenance = if app.config.partition.auto_maintenance {
        let every = std::time::Duration::from_millis(app.config.partition.maintenance_interval.max(1_000));
        tracing::info!(every_s = every.as_secs(), "partition maintenance runs in the background");
        Some(Arc::new(app.partitions().await?).spawn_maintenance(every))
    } else {
        None
    };
    let state = Arc::new(AppState { client, metrics });
    let router = Router::new()
        .route("/v1/events", get(list_events).post(post_events))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %args.listen, "audit-db HTTP service listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn error_response(e: AuditError) -> Response {
    let code = match e.class {
        ErrorClass::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorClass::Unavailable | ErrorClass::Transient => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Integrity | ErrorClass::Permanent => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(serde_json::json!({"error": e.message, "class": e.class, "sqlstate": e.sqlstate}))).into_response()
}

async fn post_events(State(s): State<Arc<AppState>>, Json(body): Json<serde_json::Value>) -> Response {
    match body {
        serde_json::Value::Array(items) => match s.client.insert_batch(items).await {
            Ok(report) => {
                let items: Vec<serde_json::Value> = report
                    .items
                    .iter()
                    .map(|i| match i {
                        audit_client::BatchItem::Ok(ack) => serde_json::to_value(ack).unwrap_or_default(),
                        audit_client::BatchItem::Rejected(r) => serde_json::json!({"result": "rejected", "error": r}),
                    })
                    .collect();
                let code = if report.rejected() > 0 { StatusCode::MULTI_STATUS } else { StatusCode::CREATED };
                (
                    code,
                    Json(serde_json::json!({
                        "accepted": report.accepted(), "duplicates": report.duplicates(), "rejected": report.rejected(),
                        "items": items,
                    })),
                )
                    .into_response()
            }
            Err(e) => error_response(e),
        },
        single => match s.client.insert(single).await {
            Ok(ack) => (StatusCode::CREATED, Json(ack)).into_response(),
            Err(e) => error_response(e),
        },
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    organization_id: Option<String>,
    principal_id: Option<String>,
    action: Option<String>,
    status: Option<String>,
    data_classification: Option<String>,
    target_resource_type: Option<String>,
    target_resource_id: Option<String>,
    correlation_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

fn to_filter(p: ListParams) -> Result<EventFilter, AuditError> {
    let time = |flag: &str, v: &Option<String>| -> Result<_, AuditError> {
        v.as_deref()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| AuditError::invalid(format!("{flag}: `{s}` is not an RFC 3339 time")))
            })
            .transpose()
    };
    let mut f = EventFilter {
        organization_id: p.organization_id,
        principal_id: p.principal_id,
        actions: p.action.map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default(),
        statuses: p
            .status
            .map(|s| {
                s.split(',')
                    .map(|x| {
                        audit_core::Status::parse(x).ok_or_else(|| {
                            AuditError::invalid(format!("status: `{x}` is not attempt, success or failure"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default(),
        data_classification: p
            .data_classification
            .map(|c| {
                audit_core::DataClassification::parse(&c)
                    .ok_or_else(|| AuditError::invalid(format!("data_classification: `{c}` is not a classification")))
            })
            .transpose()?,
        target_resource_type: p.target_resource_type,
        target_resource_id: p.target_resource_id,
        correlation_id: p.correlation_id,
        limit: p.limit,
        after: p.after.as_deref().map(audit_core::Cursor::decode).transpose()?,
        ..Default::default()
    };
    f.time.gte = time("from", &p.from)?;
    f.time.lte = time("to", &p.to)?;
    Ok(f)
}

async fn list_events(State(s): State<Arc<AppState>>, Query(p): Query<ListParams>) -> Response {
    let filter = match to_filter(p) {
        Ok(f) => f,
        Err(e) => return error_response(e),
    };
    match s.client.query(&filter).await {
        Ok(a) => Json(serde_json::json!({
            "events": a.page.events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
            "next_cursor": a.page.next_cursor.map(|c| c.encode()),
            "cache": a.tier.as_str(),
        }))
        .into_response(),
        Err(e) => error_response(e),
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let report = s.client.health().await;
    let code = if report.overall == audit_core::HealthState::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let report = s.client.health().await;
    match report.components.get("primary").map(|c| c.status) {
        Some(audit_core::HealthState::Healthy) => (StatusCode::OK, "ready").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "primary database unavailable").into_response(),
    }
}

async fn render_metrics(State(s): State<Arc<AppState>>) -> String {
    s.metrics.render()
}
