//! `audit-db serve`: the HTTP service — routes, their state, the tower layers around them, and errors as problem
//! details. Every `/v1` route needs an API key ([`auth::Caller`]); reads of audit data are themselves audited.

mod auth;
mod budget;
mod connections;
mod error;
mod events;
mod integrity;
mod layers;
pub mod openapi;
mod subjects;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit_core::{CommitLsn, Consistency, HealthState};
use audit_integrity::NoteVerifier;
use audit_integrity::store::IntegrityStore;
use audit_pg::Connector;
use audit_resilience::{Breaker, BreakerState, Policy};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

pub use auth::Caller;
pub use connections::serve_on;
pub use error::{ApiError, PROBLEM_BASE, Problem};

use crate::api_keys::ApiKeyStore;
use crate::app::{App, Client};
use crate::config::ApiConfig;

/// Request header: the WAL position a read must include (`X-Audit-Min-LSN: 16/B374D848`), as returned in
/// [`COMMIT_LSN_HEADER`] by a write — read-your-writes across processes and replicas.
pub const MIN_LSN_HEADER: HeaderName = HeaderName::from_static("x-audit-min-lsn");
/// Request header: how fresh a read must be (`strong`, `read-your-writes`, `eventual`, `bounded-staleness:<ms>`).
pub const CONSISTENCY_HEADER: HeaderName = HeaderName::from_static("x-audit-consistency");
/// Response header of writes: the WAL position of the commit that stored the events.
pub const COMMIT_LSN_HEADER: HeaderName = HeaderName::from_static("x-audit-commit-lsn");

/// What every handler shares.
pub struct ServiceState {
    /// The audit client (pools, cache, breakers).
    pub client: Client,
    /// The Prometheus recorder's handle; `None` when metrics are off (`METRICS_ENABLED=false`: `/metrics` is 404).
    pub metrics: Option<PrometheusHandle>,
    /// The API keys.
    pub keys: Arc<ApiKeyStore>,
    /// Proofs, checkpoints and verification.
    pub integrity: Arc<IntegrityStore<Policy>>,
    /// The checkpoint public key (`None` without a configured signing key: proofs and verify answer 503).
    pub verifier: Option<NoteVerifier>,
    /// Limits and read auditing.
    pub api: ApiConfig,
    /// The primary's circuit breaker (an open breaker makes the service unready).
    pub primary_breaker: Arc<Breaker>,
    /// The personal-data fields of `[privacy]`: their values are redacted in the recorded filters of audited
    /// reads, because a subject's id used as a filter would otherwise be stored in clear and outlive its erasure.
    pub personal_fields: audit_core::PersonalFields,
    /// The personal-data policy shared with [`ServiceState::client`] (`None` when off): the erase route destroys
    /// keys through it, so an erasure takes effect in this process at once.
    pub privacy: Option<Arc<crate::app::Privacy>>,
    /// The partition manager (legal holds are checked before an erasure); set by `serve`.
    pub partitions: Option<Arc<audit_partition::PartitionManager<Policy>>>,
    connector: Connector,
    migrations_current: AtomicBool,
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

impl ServiceState {
    /// The service's state for `app`'s configuration, around a connected client.
    pub fn new(app: &App, client: Client, metrics: Option<PrometheusHandle>) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            metrics,
            keys: Arc::new(app.api_keys()?),
            integrity: Arc::new(app.integrity()?),
            verifier: app.verifier()?,
            api: app.config.api.clone(),
            primary_breaker: app.breakers().get_or_create(audit_resilience::names::PRIMARY),
            personal_fields: app.config.privacy.personal_fields.clone(),
            privacy: None,
            partitions: None,
            connector: app.connector().clone(),
            migrations_current: AtomicBool::new(false),
            indexes: IndexHealthSlot::default(),
        })
    }

    /// Migrations the database lacks (checked until they are all applied once; they are not un-applied under a
    /// running service).
    async fn pending_migrations(&self) -> Result<Vec<String>, String> {
        if self.migrations_current.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let pending = audit_pg::pending_migrations(&self.connector).await.map_err(|e| e.to_string())?;
        if pending.is_empty() {
            self.migrations_current.store(true, Ordering::Relaxed);
        }
        Ok(pending)
    }

    /// Records a read of audit data as an `audit_log_access` event in the reader's organisation, committed before
    /// the answer is sent (an unrecorded read is refused: the access trail has no holes).
    pub(crate) async fn record_access(
        &self,
        caller: &Caller,
        route: &str,
        filter: serde_json::Value,
    ) -> Result<(), ApiError> {
        if !self.api.audit_reads {
            return Ok(());
        }
        let k = caller.key();
        let filter = redact_filter(&self.personal_fields, filter);
        let event = serde_json::json!({
            "timestamp": audit_core::event::format_timestamp(chrono::Utc::now()),
            "action": "audit_log_access",
            "status": "success",
            "organization_id": k.organization_id,
            "principal_id": format!("api-key:{}", k.id),
            "target_resource_type": "audit_log",
            "target_resource_id": route,
            "data_classification": "CONFIDENTIAL",
            "details": {"key_id": k.id, "key_name": k.name, "route": route, "filter": filter},
        });
        self.client.insert(event).await?;
        Ok(())
    }
}

/// What an audited read records of its filter: the values of personal fields (`principal`, `resource_id`, personal
/// `details` keys) replaced by `[redacted]`, so a data subject's id never reaches the log in clear through a query.
pub(crate) fn redact_filter(fields: &audit_core::PersonalFields, mut filter: serde_json::Value) -> serde_json::Value {
    use audit_core::PersonalField;
    const REDACTED: &str = "[redacted]";
    if !fields.is_on() {
        return filter;
    }
    let Some(o) = filter.as_object_mut() else { return filter };
    for (field, param) in [(PersonalField::PrincipalId, "principal"), (PersonalField::TargetResourceId, "resource_id")]
    {
        if fields.contains(&field)
            && let Some(v) = o.get_mut(param)
        {
            *v = serde_json::Value::String(REDACTED.into());
        }
    }
    let detail_keys: Vec<&str> = fields.detail_keys().collect();
    if let Some(v) = o.get_mut("details") {
        *v = match v.as_str().map(serde_json::from_str::<serde_json::Value>) {
            Some(Ok(serde_json::Value::Object(mut wanted))) => {
                for k in &detail_keys {
                    if let Some(x) = wanted.get_mut(*k) {
                        *x = serde_json::Value::String(REDACTED.into());
                    }
                }
                serde_json::Value::String(serde_json::Value::Object(wanted).to_string())
            }
            // Not an object: it was refused before the read; record nothing of it.
            _ => serde_json::Value::String(REDACTED.into()),
        };
    }
    filter
}

/// The service's routes with every layer (auth is per route, through [`Caller`]).
pub fn router(state: Arc<ServiceState>) -> Router {
    let api = state.api.clone();
    let routes = Router::new()
        .route("/v1/events", get(events::list_events).post(events::post_events))
        .route("/v1/events:batch", post(events::post_batch))
        .route("/v1/events/{event_id}", get(events::get_event))
        .route("/v1/proofs/{event_id}", get(integrity::get_proof))
        .route("/v1/checkpoints/{org}", get(integrity::get_checkpoint))
        .route("/v1/verify", post(integrity::post_verify))
        .route("/v1/subjects/{subject}/erase", post(subjects::post_erase))
        .route("/fhir/AuditEvent", post(events::post_fhir_audit_event))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi::serve_openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(api.body_limit_bytes))
        .with_state(state);
    layers::apply(routes, &api)
}

/// Serves `router` on `addr` until SIGINT or SIGTERM (what Kubernetes and `docker stop` send), then drains in-flight
/// requests (their events are committed before they answer, so the group-commit queue drains with them).
pub async fn serve(router: Router, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(router, listener, shutdown_signal()).await
}

/// Waits (at most `limit`) until the client's group-commit queue is empty, after the listener stopped.
pub async fn drain_insert_queue(client: &Client, limit: Duration) {
    let started = std::time::Instant::now();
    while client.insert_queue().0 > 0 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = client.insert_queue().0;
    if left > 0 {
        tracing::warn!(left, "events still queued for commit at exit");
    }
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

/// The read consistency a request asks for: `X-Audit-Min-LSN` (read-your-writes at that position) or
/// `X-Audit-Consistency`; neither: read-your-writes of this service's own last commit.
pub fn consistency_of(headers: &HeaderMap) -> Result<Consistency, ApiError> {
    let text = |name: &HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_string())
                    .map_err(|_| ApiError::bad_request(format!("{name}: not ASCII text")))
            })
            .transpose()
    };
    let lsn = text(&MIN_LSN_HEADER)?
        .map(|s| s.parse::<CommitLsn>().map_err(|e| ApiError::bad_request(format!("{MIN_LSN_HEADER}: {e}"))))
        .transpose()?;
    let consistency = text(&CONSISTENCY_HEADER)?
        .map(|s| s.parse::<Consistency>().map_err(|e| ApiError::bad_request(format!("{CONSISTENCY_HEADER}: {e}"))))
        .transpose()?;
    match (consistency, lsn) {
        (None, None) => Ok(Consistency::default()),
        (Some(c), None) => Ok(c),
        (None | Some(Consistency::ReadYourWrites(_)), Some(l)) => Ok(Consistency::ReadYourWrites(Some(l))),
        (Some(c), Some(_)) => Err(ApiError::bad_request(format!(
            "{MIN_LSN_HEADER}: a read-your-writes position cannot be combined with {CONSISTENCY_HEADER}: {c}"
        ))),
    }
}

/// `GET /health`: liveness and the component report.
#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, description = "The process serves; body: the health report", body = Object),
              (status = 503, description = "Unhealthy", body = Object)))]
pub(crate) async fn health(State(s): State<Arc<ServiceState>>) -> Response {
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

/// `GET /ready`: ready while the primary answers, every migration is applied and the primary's breaker is not open.
#[utoipa::path(get, path = "/ready", tag = "probes",
    responses((status = 200, description = "Ready", body = crate::readiness::Readiness),
              (status = 503, description = "Not ready; the body says why", body = crate::readiness::Readiness)))]
pub(crate) async fn ready(State(s): State<Arc<ServiceState>>) -> Response {
    let report = s.client.health().await;
    let breaker = s.primary_breaker.state();
    let pending = s.pending_migrations().await;
    let r = crate::readiness::readiness(&report).with_gates(breaker == BreakerState::Open, breaker.as_str(), pending);
    let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(r)).into_response()
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus exposition", content_type = "text/plain", body = String),
              (status = 404, description = "Metrics are off", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn render_metrics(State(s): State<Arc<ServiceState>>) -> Response {
    match &s.metrics {
        Some(handle) => handle.render().into_response(),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", "metrics are off (METRICS_ENABLED=false)")
                .into_response()
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("path: no route {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_filter_values_are_redacted() {
        let fields = audit_core::PersonalFields::parse("principal_id,details.patient_name").unwrap();
        let f = serde_json::json!({"principal": "alice", "resource_id": "r1",
                                   "details": "{\"patient_name\":\"Al\",\"reason\":\"t\"}"});
        let r = redact_filter(&fields, f.clone());
        assert_eq!(r["principal"], "[redacted]");
        assert_eq!(r["resource_id"], "r1");
        let d: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(d, serde_json::json!({"patient_name": "[redacted]", "reason": "t"}));
        assert_eq!(redact_filter(&audit_core::PersonalFields::default(), f.clone()), f);
    }

    #[test]
    fn read_headers_map_to_consistency() {
        let mut h = HeaderMap::new();
        assert_eq!(consistency_of(&h).unwrap(), Consistency::ReadYourWrites(None));
        h.insert(MIN_LSN_HEADER, "16/B374D848".parse().unwrap());
        let lsn: CommitLsn = "16/B374D848".parse().unwrap();
        assert_eq!(consistency_of(&h).unwrap(), Consistency::ReadYourWrites(Some(lsn)));
        h.insert(CONSISTENCY_HEADER, "eventual".parse().unwrap());
        let e = consistency_of(&h).unwrap_err();
        assert!(e.problem().detail.starts_with("x-audit-min-lsn"), "{:?}", e.problem());
        h.remove(MIN_LSN_HEADER);
        assert_eq!(consistency_of(&h).unwrap(), Consistency::Eventual);
        h.insert(MIN_LSN_HEADER, "nope".parse().unwrap());
        h.remove(CONSISTENCY_HEADER);
        let e = consistency_of(&h).unwrap_err();
        assert!(e.problem().detail.contains("nope"), "{:?}", e.problem());
    }
}
