//! The audit event: what callers send, and what the database stores and gives back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Outcome of the audited action, as the seed defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The action was attempted; its outcome is not known yet.
    Attempt,
    /// The action succeeded.
    Success,
    /// The action failed.
    Failure,
}

impl Status {
    /// Every value, in the order the schema's CHECK lists them.
    pub const ALL: [Status; 3] = [Status::Attempt, Status::Success, Status::Failure];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Attempt => "attempt",
            Status::Success => "success",
            Status::Failure => "failure",
        }
    }

    /// Parses the stored text exactly (no case folding: the database compares exactly too).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Sensitivity class of the event's data; drives retention and access policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataClassification {
    /// Public information.
    Public,
    /// Internal (the default).
    #[default]
    Internal,
    /// Confidential business data.
    Confidential,
    /// Protected health information (HIPAA).
    Phi,
    /// Financial data.
    Financial,
}

impl DataClassification {
    /// Every value, in the order the schema's CHECK lists them.
    pub const ALL: [DataClassification; 5] = [
        DataClassification::Public,
        DataClassification::Internal,
        DataClassification::Confidential,
        DataClassification::Phi,
        DataClassification::Financial,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClassification::Public => "PUBLIC",
            DataClassification::Internal => "INTERNAL",
            DataClassification::Confidential => "CONFIDENTIAL",
            DataClassification::Phi => "PHI",
            DataClassification::Financial => "FINANCIAL",
        }
    }

    /// Parses the stored text exactly.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A validated event ready to store: timestamps are UTC with microsecond precision (what PostgreSQL keeps), the
/// `event_id` is known, and `details` is a JSON object whose numbers are already in PostgreSQL's numeric form, so
/// that what we hash is exactly what the database will give back.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Idempotency key: the caller's, or a UUIDv7 generated at validation.
    pub event_id: Uuid,
    /// Whether the caller supplied `event_id` (only then can a re-send be recognised as a duplicate).
    pub event_id_supplied: bool,
    /// When the action happened (partition key).
    pub timestamp: DateTime<Utc>,
    /// What was done, e.g. `patient_data_access`.
    pub action: String,
    /// Outcome.
    pub status: Status,
    /// Who did it.
    pub principal_id: Option<String>,
    /// Tenant; also names the event's integrity log (absent → the shared log).
    pub organization_id: Option<String>,
    /// Kind of resource acted on.
    pub target_resource_type: Option<String>,
    /// Identifier of the resource acted on.
    pub target_resource_id: Option<String>,
    /// Free-text outcome.
    pub outcome_description: Option<String>,
    /// Ties events of one request together.
    pub correlation_id: Option<String>,
    /// Sensitivity class.
    pub data_classification: DataClassification,
    /// Named retention policy (`standard` by default).
    pub retention_policy: String,
    /// Version of the event's schema, as the producer states it.
    pub event_version: String,
    /// Producer-stated time to live (free text, e.g. `30d`); retention is decided by policy, not by this.
    pub ttl: Option<String>,
    /// Producer-measured processing latency in milliseconds.
    pub processing_latency: Option<i32>,
    /// Structured context, always a JSON object.
    pub details: Map<String, Value>,
}

/// An event as stored: the validated fields plus what the store assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Storage row number (from a sequence); ordered by ingestion, not by event time.
    pub id: i64,
    /// When the row was written (microseconds, UTC), set by the writer and covered by the leaf hash.
    pub ingested_at: DateTime<Utc>,
    /// Position in the organisation's integrity log (0-based, gap-free).
    pub seq: i64,
    /// RFC 6962 leaf hash of the canonical form (see `docs/integrity.md`).
    pub leaf_hash: [u8; 32],
    /// The event's own fields.
    pub event: NewEvent,
}

/// Truncates to whole microseconds, PostgreSQL's timestamptz precision.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).expect("a DateTime's own micros are in range")
}

/// RFC 3339 in UTC with exactly six fractional digits, the one text form used in output and in hashes.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The fields of a stored event's JSON form ([`StoredEvent::to_json`]), in the order columns are listed everywhere
/// (COPY, CSV output, evidence packs).
pub const STORED_FIELDS: [&str; 20] = [
    "id",
    "event_id",
    "timestamp",
    "ingested_at",
    "action",
    "status",
    "principal_id",
    "organization_id",
    "target_resource_type",
    "target_resource_id",
    "outcome_description",
    "correlation_id",
    "data_classification",
    "retention_policy",
    "event_version",
    "ttl",
    "processing_latency",
    "details",
    "seq",
    "leaf_hash",
];

impl StoredEvent {
    /// The event as one JSON object with the seed's snake_case field names plus the stored extras; this is the
    /// NDJSON row format of `audit-db query` and of evidence packs.
    pub fn to_json(&self) -> Value {
        let e = &self.event;
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.id));
        m.insert("event_id".into(), Value::from(e.event_id.to_string()));
        m.insert("timestamp".into(), Value::from(format_timestamp(e.timestamp)));
        m.insert("ingested_at".into(), Value::from(format_timestamp(self.ingested_at)));
        m.insert("action".into(), Value::from(e.action.clone()));
        m.insert("status".into(), Value::from(e.status.as_str()));
        let opt = |v: &Option<String>| v.clone().map(Value::from).unwrap_or(Value::Null);
        m.insert("principal_id".into(), opt(&e.principal_id));
        m.insert("organization_id".into(), opt(&e.organization_id));
        m.insert("target_resource_type".into(), opt(&e.target_resource_type));
        m.insert("target_resource_id".into(), opt(&e.target_resource_id));
        m.insert("outcome_description".into(), opt(&e.outcome_description));
        m.insert("correlation_id".into(), opt(&e.correlation_id));
        m.insert("data_classification".into(), Value::from(e.data_classification.as_str()));
        m.insert("retention_policy".into(), Value::from(e.retention_policy.clone()));
        m.insert("event_version".into(), Value::from(e.event_version.clone()));
        m.insert("ttl".into(), opt(&e.ttl));
        m.insert("processing_latency".into(), e.processing_latency.map(Value::from).unwrap_or(Value::Null));
        m.insert("details".into(), Value::Object(e.details.clone()));
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("leaf_hash".into(), Value::from(hex::encode(self.leaf_hash)));
        Value::Object(m)
    }
}
