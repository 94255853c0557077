//! Tamper evidence over HTTP: inclusion proofs, checkpoints with consistency proofs, and verification — each
//! confined to the key's organisation and each recorded as an access.

use std::sync::Arc;

use audit_core::AuditError;
use audit_integrity::NoteVerifier;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::events::{path_rejection, query_rejection, visible_event};
use super::{ApiError, Caller, ServiceState};
use crate::api_keys::Scope;

fn verifier(s: &ServiceState) -> Result<&NoteVerifier, ApiError> {
    s.verifier.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-signing-key",
            "No checkpoint key configured",
            "the service has no signing key (AUDIT_DB_SIGNING_KEY_FILE): proofs and verification are unavailable",
        )
    })
}

/// `GET /v1/proofs/{event_id}`: the event's inclusion proof against the latest signed checkpoint of its log.
#[utoipa::path(get, path = "/v1/proofs/{event_id}", tag = "integrity", security(("bearer" = [])),
    params(("event_id" = uuid::Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "Inclusion proof and signed checkpoint note", body = super::openapi::InclusionProofDoc),
        (status = 400, description = "Bad id, or the event is newer than the latest checkpoint", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the query scope", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event for this key", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No signing key, or database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_proof(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    id: Result<Path<uuid::Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Query)?;
    let Path(id) = id.map_err(path_rejection)?;
    let v = verifier(&s)?;
    // Visibility first, on the primary: a proof of another organisation's event must not even confirm it exists.
    visible_event(&s, &caller, id, audit_core::Consistency::Strong).await?;
    let proof = s.integrity.inclusion_proof(v, id).await?;
    s.record_access(&caller, "GET /v1/proofs/{event_id}", json!({"event_id": id})).await?;
    Ok(Json(proof).into_response())
}

/// Query of `GET /v1/checkpoints/{org}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct CheckpointQuery {
    /// An older signed tree size: answer a consistency proof from it to the latest checkpoint.
    #[param(minimum = 0)]
    size: Option<i64>,
}

/// `GET /v1/checkpoints/{org}`: the organisation's latest signed checkpoint, or with `?size=` a consistency proof
/// from that older checkpoint to the latest.
#[utoipa::path(get, path = "/v1/checkpoints/{org}", tag = "integrity", security(("bearer" = [])),
    params(("org" = String, Path, description = "The organisation"), CheckpointQuery),
    responses(
        (status = 200, description = "The latest checkpoint, or a consistency proof", body = super::openapi::CheckpointAnswer),
        (status = 400, description = "Bad parameter, or no checkpoint of that size", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another organisation, or the key lacks the query scope", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No checkpoint yet", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No signing key, or database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_checkpoint(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    org: Result<Path<String>, PathRejection>,
    q: Result<Query<CheckpointQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Query)?;
    let Path(org) = org.map_err(path_rejection)?;
    let Query(q) = q.map_err(query_rejection)?;
    caller.read_org("org", Some(&org))?;
    let body = match q.size {
        Some(size) => {
            let proof = s.integrity.consistency_proof(verifier(&s)?, &org, Some(size), None).await?;
            json!({"consistency": proof})
        }
        None => {
            let latest = s.integrity.checkpoints(&org).await?.pop().ok_or_else(|| {
                AuditError::not_found(format!("org: organisation `{org}` has no signed checkpoint yet"))
            })?;
            json!({"checkpoint": latest})
        }
    };
    s.record_access(&caller, "GET /v1/checkpoints/{org}", json!({"org": org, "size": q.size})).await?;
    Ok(Json(body).into_response())
}

/// Body of `POST /v1/verify` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    /// Only what is new since the last checkpoint a clean run verified.
    incremental: bool,
    /// The organisation (admin keys only; default: the key's).
    org: Option<String>,
}

/// `POST /v1/verify`: recomputes the key's organisation's log and checks it against its signed checkpoints.
#[utoipa::path(post, path = "/v1/verify", tag = "integrity", security(("bearer" = [])),
    request_body(content = VerifyRequest, description = "Optional: incremental, org (admin)"),
    responses(
        (status = 200, description = "The findings (empty: clean)", body = super::openapi::VerifyAnswer),
        (status = 400, description = "Bad body", body = super::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the verify scope, or another organisation", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No signing key, or database unavailable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn post_verify(
    State(s): State<Arc<ServiceState>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::Verify)?;
    let req: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    let org = caller.read_org("org", req.org.as_deref())?.unwrap_or_else(|| caller.key().organization_id.clone());
    let v = verifier(&s)?;
    let report = s.integrity.verify(v, Some(&org), req.incremental, &|_| {}).await?;
    s.record_access(&caller, "POST /v1/verify", json!({"org": org, "incremental": req.incremental})).await?;
    let findings: Vec<_> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "organization_id": if f.log_id.is_empty() { None } else { Some(&f.log_id) },
                "seq": f.seq, "event_id": f.event_id, "kind": f.kind, "detail": f.detail,
            })
        })
        .collect();
    Ok(Json(json!({
        "organization_id": org, "clean": findings.is_empty(), "logs": report.logs, "leaves": report.leaves,
        "seconds": report.seconds, "findings": findings,
    }))
    .into_response())
}
