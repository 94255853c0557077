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
}

impl std::str::FromStr for Status {
    type Err = UnknownValue;

    /// Parses the stored text exactly (no case folding: the database compares exactly too).
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownValue::new(s, "attempt, success, failure"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
}

impl std::str::FromStr for DataClassification {
    type Err = UnknownValue;

    /// Parses the stored text exactly (upper case, as stored).
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue::new(s, "PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL"))
    }
}

impl std::fmt::Display for DataClassification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of an enumeration's values; the message lists the values allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of {allowed}")]
pub struct UnknownValue {
    /// The text given.
    pub value: String,
    /// The values allowed, comma-separated.
    pub allowed: &'static str,
}

impl UnknownValue {
    fn new(value: &str, allowed: &'static str) -> Self {
        Self { value: value.to_string(), allowed }
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
    /// The event as one JSON object (see its `Serialize` impl): the NDJSON row format of `audit-db query`, the HTTP
    /// API and evidence packs.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a stored event serialises")
    }
}

/// The JSON form of a stored event, borrowed for serialising: the seed's snake_case field names plus the stored
/// extras, timestamps as [`format_timestamp`], the leaf hash in hex.
#[derive(Serialize)]
struct StoredEventRef<'a> {
    id: i64,
    event_id: &'a Uuid,
    #[serde(serialize_with = "wire::timestamp::serialize")]
    timestamp: &'a DateTime<Utc>,
    #[serde(serialize_with = "wire::timestamp::serialize")]
    ingested_at: &'a DateTime<Utc>,
    action: &'a str,
    status: Status,
    principal_id: &'a Option<String>,
    organization_id: &'a Option<String>,
    target_resource_type: &'a Option<String>,
    target_resource_id: &'a Option<String>,
    outcome_description: &'a Option<String>,
    correlation_id: &'a Option<String>,
    data_classification: DataClassification,
    retention_policy: &'a str,
    event_version: &'a str,
    ttl: &'a Option<String>,
    processing_latency: Option<i32>,
    details: &'a Map<String, Value>,
    seq: i64,
    #[serde(serialize_with = "wire::hash_hex::serialize")]
    leaf_hash: &'a [u8; 32],
}

impl Serialize for StoredEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = &self.event;
        StoredEventRef {
            id: self.id,
            event_id: &e.event_id,
            timestamp: &e.timestamp,
            ingested_at: &self.ingested_at,
            action: &e.action,
            status: e.status,
            principal_id: &e.principal_id,
            organization_id: &e.organization_id,
            target_resource_type: &e.target_resource_type,
            target_resource_id: &e.target_resource_id,
            outcome_description: &e.outcome_description,
            correlation_id: &e.correlation_id,
            data_classification: e.data_classification,
            retention_policy: &e.retention_policy,
            event_version: &e.event_version,
            ttl: &e.ttl,
            processing_latency: e.processing_latency,
            details: &e.details,
            seq: self.seq,
            leaf_hash: &self.leaf_hash,
        }
        .serialize(s)
    }
}

/// The JSON form read back strictly (evidence packs are checked against it): every field present (nullable ones as
/// `null`), no unknown field, timestamps and ids in exactly the form they are written in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEventOwned {
    id: i64,
    #[serde(deserialize_with = "wire::uuid_strict::deserialize")]
    event_id: Uuid,
    #[serde(deserialize_with = "wire::timestamp::deserialize")]
    timestamp: DateTime<Utc>,
    #[serde(deserialize_with = "wire::timestamp::deserialize")]
    ingested_at: DateTime<Utc>,
    action: String,
    status: Status,
    #[serde(deserialize_with = "wire::required")]
    principal_id: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    organization_id: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    target_resource_type: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    target_resource_id: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    outcome_description: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    correlation_id: Option<String>,
    data_classification: DataClassification,
    retention_policy: String,
    event_version: String,
    #[serde(deserialize_with = "wire::required")]
    ttl: Option<String>,
    #[serde(deserialize_with = "wire::required")]
    processing_latency: Option<i32>,
    details: Map<String, Value>,
    seq: i64,
    #[serde(deserialize_with = "wire::hash_hex::deserialize")]
    leaf_hash: [u8; 32],
}

impl<'de> Deserialize<'de> for StoredEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let o = StoredEventOwned::deserialize(d)?;
        Ok(StoredEvent {
            id: o.id,
            ingested_at: o.ingested_at,
            seq: o.seq,
            leaf_hash: o.leaf_hash,
            event: NewEvent {
                event_id: o.event_id,
                event_id_supplied: true,
                timestamp: o.timestamp,
                action: o.action,
                status: o.status,
                principal_id: o.principal_id,
                organization_id: o.organization_id,
                target_resource_type: o.target_resource_type,
                target_resource_id: o.target_resource_id,
                outcome_description: o.outcome_description,
                correlation_id: o.correlation_id,
                data_classification: o.data_classification,
                retention_policy: o.retention_policy,
                event_version: o.event_version,
                ttl: o.ttl,
                processing_latency: o.processing_latency,
                details: o.details,
            },
        })
    }
}

/// serde helpers for the exact wire forms of stored events.
pub mod wire {
    use serde::{Deserialize, Deserializer};

    /// A nullable field that must be present (`null` when absent in the event): a missing key is an error naming
    /// the field, as the strict pack reader requires.
    pub fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<T>::deserialize(d)
    }

    /// Timestamps as [`super::format_timestamp`]: RFC 3339, UTC, exactly six fractional digits, `Z`.
    pub mod timestamp {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

        /// Writes the one text form.
        pub fn serialize<S: Serializer>(t: &&DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&super::super::format_timestamp(**t))
        }

        /// Reads only the one text form.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
            let text = String::deserialize(d)?;
            let t = DateTime::parse_from_rfc3339(&text)
                .map_err(|_| D::Error::custom(format!("`{text}` is not an RFC 3339 time")))?
                .with_timezone(&Utc);
            if super::super::format_timestamp(t) != text {
                return Err(D::Error::custom(format!("`{text}` is not in the YYYY-MM-DDTHH:MM:SS.ffffffZ form")));
            }
            Ok(t)
        }
    }

    /// Event ids as lowercase hyphenated UUIDs, and only that form.
    pub mod uuid_strict {
        use serde::{Deserialize, Deserializer, de::Error as _};
        use uuid::Uuid;

        /// Reads only the lowercase hyphenated form.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
            let text = String::deserialize(d)?;
            let id = Uuid::parse_str(&text).map_err(|_| D::Error::custom(format!("`{text}` is not a UUID")))?;
            if id.hyphenated().to_string() != text {
                return Err(D::Error::custom(format!("`{text}` is not a lowercase hyphenated UUID")));
            }
            Ok(id)
        }
    }

    /// 32-byte hashes as 64 lowercase hex digits.
    pub mod hash_hex {
        use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

        /// Writes lowercase hex.
        pub fn serialize<S: Serializer>(h: &&[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(h))
        }

        /// Reads exactly 32 bytes of hex.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let text = String::deserialize(d)?;
            let bytes = hex::decode(&text).map_err(|_| D::Error::custom(format!("`{text}` is not hex")))?;
            bytes.try_into().map_err(|_| D::Error::custom(format!("`{text}` is not 32 bytes")))
        }
    }
}
