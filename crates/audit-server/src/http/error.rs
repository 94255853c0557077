//! Every error the HTTP service returns, as `application/problem+json` (RFC 9457), decided in one place from the
//! error's kind.

use audit_core::{AuditError, ErrorKind};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of the stable problem `type` URIs (one per kind; documented in the OpenAPI description).
pub const PROBLEM_BASE: &str = "https://audit-db.dev/problems/";

/// Seconds a client should wait before retrying after a 429 or 503.
const RETRY_AFTER_SECS: u64 = 1;

/// An HTTP error response body (RFC 9457 problem details).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// Stable URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What was wrong in this request, naming the field, parameter or value.
    pub detail: String,
    /// The PostgreSQL SQLSTATE, when the database refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub sqlstate: Option<String>,
}

/// An error of the HTTP layer: an [`AuditError`] from the libraries, or one of the service's own refusals.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    sqlstate: Option<String>,
}

impl ApiError {
    /// A refusal of the service itself (authentication, size, routing).
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into(), sqlstate: None }
    }

    /// 400 naming what was wrong.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", detail)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("{PROBLEM_BASE}{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            sqlstate: self.sqlstate.clone(),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        let (status, slug, title) = match e.kind() {
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid-input", "Invalid input"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded", "Too much work waiting"),
            ErrorKind::CircuitOpen => (StatusCode::SERVICE_UNAVAILABLE, "circuit-open", "Dependency circuit open"),
            ErrorKind::Unavailable | ErrorKind::Transient => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Dependency unavailable")
            }
            ErrorKind::Integrity => (StatusCode::INTERNAL_SERVER_ERROR, "integrity", "Integrity violation"),
            ErrorKind::NoPartition | ErrorKind::Permanent => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        };
        Self { status, slug, title, detail: e.message().to_string(), sqlstate: e.sqlstate().map(|s| s.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"audit-db\""));
        }
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        r
    }
}
