//! `audit-db serve`: the HTTP service — routes, their state, and errors as problem details.

mod error;

use std::net::SocketAddr;
use std::sync::Arc;

use audit_core::HealthState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::{ApiError, PROBLEM_BASE, Problem};

use crate::app::Client;
use crate::filter_params::{FilterParams, ParamNames};

/// What every handler shares.
pub struct ServiceState {
    /// The audit client (pools, cache, breakers).
    pub client: Client,
    /// The Prometheus recorder's handle; `None` when metrics are off (`METRICS_ENABLED=false`: `/metrics` is 404).
    pub metrics: Option<PrometheusHandle>,
    /// The latest index analysis as a health component (`indexes` in `/health`), set by the background rounds.
    pub indexes: IndexHealthSlot,
}

/// Where the background index rounds leave their latest health component.
pub type IndexHealthSlot = Arc<std::sync::Mutex<Option<audit_core::ComponentHealth>>>;

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState").field("metrics", &self.metrics.is_some()).finish_non_exhaustive()
    }
}

/// The service's routes.
pub fn router(state: Arc<ServiceState>) -> Router {
    Router::new()
        .route("/v1/events", get(list_events).post(post_events))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// Serves `router` on `addr` until SIGINT or SIGTERM (what Kubernetes and `docker stop` send), then drains in-flight
/// requests.
pub async fn serve(router: Router, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "audit-db HTTP service listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("audit-db HTTP service stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the service");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested: draining in-flight requests");
}

async fn post_events(
    State(s): State<Arc<ServiceState>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(format!("body: {}", e.body_text())))?;
    Ok(match body {
        serde_json::Value::Array(items) => {
            let report = s.client.insert_batch(items).await?;
            let items: Vec<serde_json::Value> = report
                .items
                .iter()
                .map(|i| match i {
                    audit_client::BatchItem::Ok(ack) => serde_json::to_value(ack).unwrap_or_default(),
                    audit_client::BatchItem::Rejected(r) => {
                        serde_json::json!({"result": "rejected", "error": r.reason})
                    }
                })
                .collect();
            let code = if report.rejected() > 0 { StatusCode::MULTI_STATUS } else { StatusCode::CREATED };
            let body = serde_json::json!({
                "accepted": report.accepted(), "duplicates": report.duplicates(), "rejected": report.rejected(),
                "items": items,
            });
            (code, Json(body)).into_response()
        }
        single => (StatusCode::CREATED, Json(s.client.insert(single).await?)).into_response(),
    })
}

async fn list_events(
    State(s): State<Arc<ServiceState>>,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let filter = params.to_filter(Utc::now(), ParamNames::Http)?;
    let a = s.client.query(&filter).await?;
    Ok(Json(serde_json::json!({
        "events": a.page.events,
        "next_cursor": a.page.next_cursor.map(|c| c.encode()),
        "cache": a.tier.as_str(),
    }))
    .into_response())
}

async fn health(State(s): State<Arc<ServiceState>>) -> Response {
    let mut report = s.client.health().await;
    let indexes = s.indexes.lock().map(|g| g.clone()).unwrap_or(None);
    if let Some(c) = indexes {
        // Index problems only degrade: queries still run, on slower plans.
        if c.status != HealthState::Healthy && report.overall == HealthState::Healthy {
            report.overall = HealthState::Degraded;
        }
        report.components.insert(c.name.clone(), c);
    }
    let code = if report.overall == HealthState::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(report)).into_response()
}

async fn ready(State(s): State<Arc<ServiceState>>) -> Response {
    let report = s.client.health().await;
    match report.components.get("primary").map(|c| c.status) {
        Some(HealthState::Healthy) => (StatusCode::OK, "ready").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "primary database unavailable").into_response(),
    }
}

async fn render_metrics(State(s): State<Arc<ServiceState>>) -> Response {
    match &s.metrics {
        Some(handle) => handle.render().into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", "metrics are off (METRICS_ENABLED=false)")
                .into_response()
        }
    }
}
