//! `/v1/subjects/{subject}/erase`: GDPR erasure (crypto-shredding) of a data subject through the API, admin keys
//! only. The same function as `audit-db erase`, on the policy the service's client reads with, so the subject's
//! values read as `[erased]` in this process at once.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::events::{bytes_rejection, path_rejection, query_rejection};
use super::{ApiError, Caller, ServiceState};
use crate::api_keys::Scope;
use crate::privacy::{ErasureStatus, erase_subject};

/// `dry_run` as a query parameter (`?dry_run=true`) or in a JSON body (`{"dry_run": true}`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EraseParams {
    /// Report what would be erased; change nothing.
    pub(crate) dry_run: Option<bool>,
}

/// `POST /v1/subjects/{subject}/erase`: destroys the subject's key (its `principal_id`/`target_resource_id` values
/// and personal `details` read as `[erased]` afterwards) and records the erasure; 409 while a legal hold covers
/// some of its events or when the personal-data policy is off.
#[utoipa::path(post, path = "/v1/subjects/{subject}/erase", tag = "privacy", security(("bearer" = [])),
    params(("subject" = String, Path, description = "The subject's id as written in principal_id / target_resource_id"),
        EraseParams),
    request_body(content = Option<EraseParams>, description = "Optional; `dry_run` may also be given here"),
    responses(
        (status = 200, description = "The erasure report (status erased, dry_run or no_key)", body = Object),
        (status = 400, description = "Bad parameter or body, named", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key is not an admin key", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused: a legal hold covers the subject's events (body: the report), or the personal-data policy is off", body = Object),
        (status = 503, description = "Database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn post_erase(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    subject: Result<Path<String>, PathRejection>,
    params: Result<Query<EraseParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let body = body.map_err(bytes_rejection)?;
    let Path(subject) = subject.map_err(path_rejection)?;
    let Query(params) = params.map_err(query_rejection)?;
    let from_body: EraseParams = if body.iter().all(u8::is_ascii_whitespace) {
        EraseParams::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    let dry_run = params.dry_run.or(from_body.dry_run).unwrap_or(false);
    if subject.trim().is_empty() {
        return Err(ApiError::bad_request("subject: empty"));
    }
    let (Some(privacy), Some(partitions)) = (&s.privacy, &s.partitions) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "privacy-off",
            "Personal-data policy is off",
            "subject: nothing is stored encrypted (set AUDIT_DB_PERSONAL_FIELDS and AUDIT_DB_MASTER_KEY_FILE)",
        ));
    };
    let by = format!("api-key:{}", caller.key().id);
    let report = erase_subject(&s.client, privacy, partitions, &subject, dry_run, &by).await?;
    let code = if report.status == ErasureStatus::RefusedLegalHold { StatusCode::CONFLICT } else { StatusCode::OK };
    Ok((code, Json(report)).into_response())
}
