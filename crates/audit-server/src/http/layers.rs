//! The tower layers around every route: request ids, trace spans, HTTP metrics, a per-request timeout, an early
//! body-size check, the in-flight body budget ([`super::budget`]) and a concurrency limit. Refusals are problem details like every other error.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::ApiError;
use crate::config::ApiConfig;

/// Wraps `router` in the service's layers (outermost last).
pub(crate) fn apply(router: Router, api: &ApiConfig) -> Router {
    router
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(api.concurrency_limit))
        .layer(from_fn_with_state(
            super::budget::BodyBudget::new(api.inflight_body_bytes, api.body_limit_bytes),
            super::budget::reserve_body,
        ))
        .layer(from_fn_with_state(api.body_limit_bytes, refuse_oversized))
        .layer(from_fn_with_state(Duration::from_millis(api.request_timeout_ms), time_limit))
        .layer(from_fn(record_metrics))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// 413 before anything is read when `Content-Length` is over the limit (the extractors enforce it for bodies
/// without a length).
async fn refuse_oversized(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            format!("body: {n} bytes is more than the limit of {limit} (api.bodyLimitBytes); nothing was stored"),
        )
        .into_response();
    }
    next.run(req).await
}

/// 503 when the handler has not answered within the bound (a streamed body then continues on its own).
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
            format!("the request took longer than {} ms (api.requestTimeoutMs)", limit.as_millis()),
        )
        .into_response(),
    }
}

/// `audit_db_http_requests_total` and `audit_db_http_request_duration_seconds` by route template.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
    let started = Instant::now();
    let r = next.run(req).await;
    let status = r.status().as_u16().to_string();
    metrics::counter!(audit_core::metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(audit_core::metrics::HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    r
}
