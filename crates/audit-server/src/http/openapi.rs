//! The OpenAPI 3.1 description, generated from the handlers' annotations: served at `/openapi.json` and written to
//! `docs/openapi.json` by `cargo xtask openapi` (a test fails when the file is stale). The schema types below only
//! describe the wire format; the handlers build the same JSON from the library types.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An event as sent: the seed's fields. `action`, `status` and `timestamp` are required; unknown fields are refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventInput {
    /// Client-chosen id (UUID); generated when absent. Same id and timestamp again: a duplicate, not stored twice.
    pub event_id: Option<uuid::Uuid>,
    /// RFC 3339 with an offset.
    pub timestamp: String,
    /// What was done.
    pub action: String,
    /// attempt, success or failure.
    pub status: String,
    /// Who did it.
    pub principal_id: Option<String>,
    /// The organisation (must be the key's unless admin; default: the key's).
    pub organization_id: Option<String>,
    /// Target resource type.
    pub target_resource_type: Option<String>,
    /// Target resource id.
    pub target_resource_id: Option<String>,
    /// Free text.
    pub outcome_description: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL.
    pub data_classification: Option<String>,
    /// Retention policy name.
    pub retention_policy: Option<String>,
    /// Event schema version.
    pub event_version: Option<String>,
    /// Time to live.
    pub ttl: Option<String>,
    /// Milliseconds.
    pub processing_latency: Option<i32>,
    /// Any JSON object.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// One event or an array of events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventsInput {
    /// One event.
    One(Box<EventInput>),
    /// Several (each validated on its own).
    Many(Vec<EventInput>),
}

/// The acknowledgement of one stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckDoc {
    /// `stored`, `duplicate` or (in arrays) `rejected`.
    pub result: String,
    /// The event's id.
    pub event_id: Option<uuid::Uuid>,
    /// Row id (stored only).
    pub id: Option<i64>,
    /// Position in the organisation's integrity log (stored only).
    pub seq: Option<i64>,
    /// WAL position of the commit.
    pub commit_lsn: Option<String>,
    /// Position in the request array.
    pub index: Option<u64>,
    /// Why it was rejected, naming the field.
    pub error: Option<String>,
}

/// The answer to an array of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOutput {
    /// Stored now.
    pub accepted: u64,
    /// Already stored.
    pub duplicates: u64,
    /// Refused.
    pub rejected: u64,
    /// WAL position of the last commit.
    pub commit_lsn: Option<String>,
    /// One per input, in order.
    pub items: Vec<AckDoc>,
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventsOutput {
    /// For one event.
    One(AckDoc),
    /// For an array.
    Many(BatchOutput),
}

/// A stored event: the seed's fields plus what the store assigned.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEventDoc {
    /// Row id.
    pub id: i64,
    /// Event id.
    pub event_id: uuid::Uuid,
    /// Event time (UTC, microseconds).
    pub timestamp: String,
    /// When stored.
    pub ingested_at: String,
    /// What was done.
    pub action: String,
    /// attempt, success, failure.
    pub status: String,
    /// Who.
    pub principal_id: Option<String>,
    /// Organisation.
    pub organization_id: Option<String>,
    /// Target resource type.
    pub target_resource_type: Option<String>,
    /// Target resource id.
    pub target_resource_id: Option<String>,
    /// Free text.
    pub outcome_description: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Classification.
    pub data_classification: String,
    /// Retention policy.
    pub retention_policy: String,
    /// Schema version.
    pub event_version: String,
    /// Time to live.
    pub ttl: Option<String>,
    /// Milliseconds.
    pub processing_latency: Option<i32>,
    /// Details object.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Position in the organisation's log.
    pub seq: i64,
    /// Leaf hash (hex).
    pub leaf_hash: String,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<StoredEventDoc>,
    /// Pass as `after` for the next page.
    pub next_cursor: Option<String>,
}

/// An inclusion proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProofDoc {
    /// The event.
    pub event_id: uuid::Uuid,
    /// Its organisation.
    pub organization_id: Option<String>,
    /// Its position.
    pub seq: i64,
    /// Leaf hash (hex).
    pub leaf_hash: String,
    /// Checkpoint size.
    pub tree_size: i64,
    /// Checkpoint root (hex).
    pub root_hash: String,
    /// Audit path (hex), bottom-up.
    pub proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// A stored checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointDoc {
    /// Row id.
    pub id: i64,
    /// The log.
    pub log_id: String,
    /// Signed size.
    pub tree_size: i64,
    /// Signed root (hex).
    pub root_hash: String,
    /// When sealed.
    pub created_at: String,
    /// Key id.
    pub key_id: String,
    /// The signed note.
    pub note: String,
}

/// A consistency proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyDoc {
    /// The log.
    pub log_id: String,
    /// Older size.
    pub old_size: i64,
    /// Older root.
    pub old_root: String,
    /// Newer size.
    pub new_size: i64,
    /// Newer root.
    pub new_root: String,
    /// Proof hashes (hex).
    pub proof: Vec<String>,
}

/// `{"checkpoint": …}` or, with `?size=`, `{"consistency": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointAnswer {
    /// The latest checkpoint.
    pub checkpoint: Option<CheckpointDoc>,
    /// The consistency proof.
    pub consistency: Option<ConsistencyDoc>,
}

/// The result of a verification.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyAnswer {
    /// The organisation verified.
    pub organization_id: String,
    /// No findings.
    pub clean: bool,
    /// Logs checked.
    pub logs: u64,
    /// Leaves recomputed.
    pub leaves: u64,
    /// Wall time.
    pub seconds: f64,
    /// Findings (kind, seq, event_id, detail).
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<serde_json::Value>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("adb_…")
                    .description(Some("An API key from `audit-db api-keys create`"))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "audit-db", description = "Tamper-evident audit log service. Errors are application/problem+json \
        (RFC 9457) with a stable `type` under https://audit-db.dev/problems/ per kind."),
    paths(
        super::events::post_events, super::events::post_batch, super::events::list_events, super::events::get_event,
        super::integrity::get_proof, super::integrity::get_checkpoint, super::integrity::post_verify,
        super::subjects::post_erase, super::events::post_fhir_audit_event,
        super::health, super::ready, super::render_metrics, serve_openapi,
    ),
    components(schemas(super::Problem)),
    modifiers(&Security),
    tags((name = "events"), (name = "integrity"), (name = "privacy"), (name = "fhir"), (name = "probes"))
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "This document", body = Object)))]
pub(crate) async fn serve_openapi() -> Response {
    let mut r = document().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_openapi_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == super::document(),
            "docs/openapi.json is stale: run `cargo xtask openapi` and commit the result"
        );
        let v: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
    }

    /// The schema types mirror library types that cannot derive `ToSchema` (audit-core has no utoipa): this
    /// keeps the mirror honest. A field added to the validator or to the stored JSON form without its schema
    /// property (or the reverse) fails here.
    #[test]
    fn schema_mirrors_match_the_library_field_lists() {
        let v: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        let props = |name: &str| -> Vec<String> {
            let schema = &v["components"]["schemas"][name];
            let mut keys: Vec<String> = schema["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("schema {name} has properties"))
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let sorted = |fields: &[&str]| -> Vec<String> {
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            f.sort();
            f
        };
        assert_eq!(props("EventInput"), sorted(audit_core::validate::FIELDS), "EventInput vs validate::FIELDS");
        assert_eq!(
            props("StoredEventDoc"),
            sorted(&audit_core::event::STORED_FIELDS),
            "StoredEventDoc vs STORED_FIELDS"
        );
        let mut required: Vec<String> = v["components"]["schemas"]["EventInput"]["required"]
            .as_array()
            .expect("EventInput lists required fields")
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        required.sort();
        assert_eq!(required, sorted(&["action", "status", "timestamp"]));
    }
}
