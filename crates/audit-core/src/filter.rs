//! Query filters, keyset cursors and result pages.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event::{DataClassification, Status, StoredEvent, format_timestamp};
use crate::{AuditError, AuditResult};

/// Default page size when the caller gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page a caller may ask for.
pub const MAX_LIMIT: u32 = 10_000;

/// A time window on `timestamp`; any bound may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    /// `timestamp >= gte`
    pub gte: Option<DateTime<Utc>>,
    /// `timestamp > gt`
    pub gt: Option<DateTime<Utc>>,
    /// `timestamp <= lte`
    pub lte: Option<DateTime<Utc>>,
    /// `timestamp < lt`
    pub lt: Option<DateTime<Utc>>,
}

fn floor_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    crate::event::truncate_to_micros(t)
}

fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let f = floor_micros(t);
    if f == t { f } else { f + chrono::Duration::microseconds(1) }
}

impl TimeRange {
    /// The same window on microsecond bounds (stored timestamps have microseconds): `gte`/`lt` round up, `gt`/`lte`
    /// round down, so the database's answer equals the exact comparison on nanoseconds.
    pub fn normalized(&self) -> TimeRange {
        TimeRange {
            gte: self.gte.map(ceil_micros),
            gt: self.gt.map(floor_micros),
            lte: self.lte.map(floor_micros),
            lt: self.lt.map(ceil_micros),
        }
    }

    /// The tightest inclusive lower bound and exclusive upper bound implied by the four operators, in
    /// microseconds; used to decide which partitions and cache periods a query touches.
    pub fn bounds_micros(&self) -> (Option<i64>, Option<i64>) {
        let lo = [self.gte.map(|t| t.timestamp_micros()), self.gt.map(|t| t.timestamp_micros() + 1)]
            .into_iter()
            .flatten()
            .max();
        let hi = [self.lt.map(|t| t.timestamp_micros()), self.lte.map(|t| t.timestamp_micros() + 1)]
            .into_iter()
            .flatten()
            .min();
        (lo, hi)
    }
}

/// Where the next page starts: strictly after (older than) this `(timestamp, event_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Timestamp of the last row of the previous page.
    pub timestamp: DateTime<Utc>,
    /// Its event id (tie-breaker; `(timestamp, event_id)` is unique).
    pub event_id: Uuid,
}

impl Cursor {
    /// The opaque token handed to callers.
    pub fn encode(&self) -> String {
        let raw = format!("v1:{}:{}", self.timestamp.timestamp_micros(), self.event_id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a token produced by [`Cursor::encode`].
    pub fn decode(token: &str) -> AuditResult<Self> {
        let bad = || AuditError::invalid(format!("cursor `{token}` is not a token this server issued"));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.splitn(3, ':');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let micros: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let event_id = parts.next().and_then(|p| Uuid::parse_str(p).ok()).ok_or_else(bad)?;
        let timestamp = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        Ok(Self { timestamp, event_id })
    }
}

/// A query over stored events. Every field narrows the result; an empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Exact event id.
    pub event_id: Option<Uuid>,
    /// Any of these actions (empty: no restriction).
    pub actions: Vec<String>,
    /// Any of these statuses (empty: no restriction).
    pub statuses: Vec<Status>,
    /// Equality filters on the seed's fields.
    pub principal_id: Option<String>,
    /// Tenant.
    pub organization_id: Option<String>,
    /// Resource kind.
    pub target_resource_type: Option<String>,
    /// Resource id.
    pub target_resource_id: Option<String>,
    /// Free-text outcome (exact match).
    pub outcome_description: Option<String>,
    /// Request correlation id.
    pub correlation_id: Option<String>,
    /// Sensitivity class.
    pub data_classification: Option<DataClassification>,
    /// Retention policy name.
    pub retention_policy: Option<String>,
    /// Producer's event schema version.
    pub event_version: Option<String>,
    /// Producer-stated TTL.
    pub ttl: Option<String>,
    /// Producer-measured latency (ms).
    pub processing_latency: Option<i32>,
    /// Time window on `timestamp`.
    pub time: TimeRange,
    /// `details @> this` (JSON containment).
    pub details_contains: Option<Value>,
    /// Page size (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub limit: Option<u32>,
    /// Continue after this cursor.
    pub after: Option<Cursor>,
}

impl EventFilter {
    /// The filter with its time window on microsecond bounds (see [`TimeRange::normalized`]); queries, counts and
    /// cache keys all use this form.
    pub fn normalized(&self) -> EventFilter {
        EventFilter { time: self.time.normalized(), ..self.clone() }
    }

    /// The page size to use, or an error naming the bad limit.
    pub fn effective_limit(&self) -> AuditResult<u32> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(0) => Err(AuditError::invalid("limit: must be at least 1")),
            Some(n) if n > MAX_LIMIT => Err(AuditError::invalid(format!("limit: {n} is more than {MAX_LIMIT}"))),
            Some(n) => Ok(n),
        }
    }

    /// A canonical text of the whole filter (in-lists sorted and de-duplicated, JSON keys sorted), so that two
    /// filters asking the same thing share a cache entry and two different ones never do.
    pub fn canonical_key(&self) -> String {
        let mut actions = self.actions.clone();
        actions.sort();
        actions.dedup();
        let mut statuses: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
        statuses.sort();
        statuses.dedup();
        let t = |v: Option<DateTime<Utc>>| v.map(format_timestamp);
        let key = serde_json::json!({
            "event_id": self.event_id.map(|u| u.to_string()),
            "actions": actions,
            "statuses": statuses,
            "principal_id": self.principal_id,
            "organization_id": self.organization_id,
            "target_resource_type": self.target_resource_type,
            "target_resource_id": self.target_resource_id,
            "outcome_description": self.outcome_description,
            "correlation_id": self.correlation_id,
            "data_classification": self.data_classification.map(|c| c.as_str()),
            "retention_policy": self.retention_policy,
            "event_version": self.event_version,
            "ttl": self.ttl,
            "processing_latency": self.processing_latency,
            "gte": t(self.time.gte), "gt": t(self.time.gt), "lte": t(self.time.lte), "lt": t(self.time.lt),
            "details": self.details_contains,
            "limit": self.limit.unwrap_or(DEFAULT_LIMIT),
            "after": self.after.map(|c| c.encode()),
        });
        // serde_json's map is sorted by key (no preserve_order feature), so this text is canonical.
        key.to_string()
    }
}

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The events, ordered by `(timestamp, event_id)` descending.
    pub events: Vec<StoredEvent>,
    /// Present when more rows match: pass it as `after` to get them.
    pub next_cursor: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            timestamp: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("garbage").is_err());
    }

    #[test]
    fn equal_filters_share_a_key_and_different_ones_do_not() {
        let a = EventFilter { actions: vec!["b".into(), "a".into()], ..Default::default() };
        let b = EventFilter { actions: vec!["a".into(), "b".into(), "a".into()], ..Default::default() };
        assert_eq!(a.canonical_key(), b.canonical_key());
        let c = EventFilter { organization_id: Some("o1".into()), ..a.clone() };
        assert_ne!(a.canonical_key(), c.canonical_key());
    }
}
