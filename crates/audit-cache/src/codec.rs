//! The compact binary envelope of an L2 value: a hand-rolled, length-prefixed encoding of a [`Page`].
//!
//! Why hand-rolled: the workspace's `serde_json` has `arbitrary_precision`, so a `serde_json::Value` cannot go
//! through a non-self-describing binary serde format; `details` therefore travels as compact JSON text (which keeps
//! numbers exactly as PostgreSQL gave them) inside this envelope, and everything else as fixed-width integers.
//!
//! Layout (all integers little-endian):
//! `"ADC1"` · slot (len u32 + UTF-8) · cursor flag u8 [· micros i64 · uuid 16 B] · event count u32 · events.
//! The slot (organisation, time bounds and canonical filter) is stored so that a reader can check that the
//! value answers exactly its own query, whatever the key hash says.

use audit_core::{Cursor, DataClassification, NewEvent, Page, Status, StoredEvent};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

const MAGIC: &[u8; 4] = b"ADC1";

/// Why an L2 value could not be decoded (it is then ignored and the query goes to the database).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value ended before a field did.
    #[error("value truncated while reading {0}")]
    Truncated(&'static str),
    /// Not an envelope of this version.
    #[error("unknown envelope magic")]
    BadMagic,
    /// A tag byte or enum index out of range.
    #[error("bad value for {0}")]
    BadField(&'static str),
    /// `details` is not a JSON object.
    #[error("details is not a JSON object: {0}")]
    BadDetails(String),
    /// Bytes left over after the last event.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Encodes `page` (the answer to the query named by `slot`).
pub(crate) fn encode(slot: &str, page: &Page) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + slot.len() + page.events.len() * 512);
    out.extend_from_slice(MAGIC);
    put_str(&mut out, slot);
    match &page.next_cursor {
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.timestamp.timestamp_micros().to_le_bytes());
            out.extend_from_slice(c.event_id.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(page.events.len() as u32).to_le_bytes());
    for s in &page.events {
        let e = &s.event;
        out.extend_from_slice(&s.id.to_le_bytes());
        out.extend_from_slice(&s.ingested_at.timestamp_micros().to_le_bytes());
        out.extend_from_slice(&s.seq.to_le_bytes());
        out.extend_from_slice(&s.leaf_hash);
        out.extend_from_slice(e.event_id.as_bytes());
        out.push(e.event_id_supplied as u8);
        out.extend_from_slice(&e.timestamp.timestamp_micros().to_le_bytes());
        put_str(&mut out, &e.action);
        out.push(Status::ALL.iter().position(|v| *v == e.status).unwrap_or(0) as u8);
        put_opt(&mut out, &e.principal_id);
        put_opt(&mut out, &e.organization_id);
        put_opt(&mut out, &e.target_resource_type);
        put_opt(&mut out, &e.target_resource_id);
        put_opt(&mut out, &e.outcome_description);
        put_opt(&mut out, &e.correlation_id);
        out.push(DataClassification::ALL.iter().position(|v| *v == e.data_classification).unwrap_or(0) as u8);
        put_str(&mut out, &e.retention_policy);
        put_str(&mut out, &e.event_version);
        put_opt(&mut out, &e.ttl);
        match e.processing_latency {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            None => out.push(0),
        }
        // A map of `Value`s always serialises; compact text, no pretty printing.
        let details = serde_json::to_string(&e.details).unwrap_or_else(|_| "{}".to_string());
        put_str(&mut out, &details);
    }
    out
}

/// Decodes an envelope, returning the slot it answers and the page.
pub(crate) fn decode(bytes: &[u8]) -> Result<(String, Page), CodecError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let slot = r.string("slot")?;
    let next_cursor = match r.u8("cursor flag")? {
        0 => None,
        1 => Some(Cursor { timestamp: r.time("cursor timestamp")?, event_id: r.uuid("cursor event_id")? }),
        _ => return Err(CodecError::BadField("cursor flag")),
    };
    let count = r.u32("event count")? as usize;
    // Each event takes well over 64 bytes: a bogus count cannot make us allocate more than the value's size.
    let mut events = Vec::with_capacity(count.min(bytes.len() / 64 + 1));
    for _ in 0..count {
        let id = r.i64("id")?;
        let ingested_at = r.time("ingested_at")?;
        let seq = r.i64("seq")?;
        let leaf_hash: [u8; 32] =
            r.take(32, "leaf_hash")?.try_into().map_err(|_| CodecError::Truncated("leaf_hash"))?;
        let event_id = r.uuid("event_id")?;
        let event_id_supplied = match r.u8("event_id_supplied")? {
            0 => false,
            1 => true,
            _ => return Err(CodecError::BadField("event_id_supplied")),
        };
        let timestamp = r.time("timestamp")?;
        let action = r.string("action")?;
        let status = *Status::ALL.get(r.u8("status")? as usize).ok_or(CodecError::BadField("status"))?;
        let principal_id = r.opt_string("principal_id")?;
        let organization_id = r.opt_string("organization_id")?;
        let target_resource_type = r.opt_string("target_resource_type")?;
        let target_resource_id = r.opt_string("target_resource_id")?;
        let outcome_description = r.opt_string("outcome_description")?;
        let correlation_id = r.opt_string("correlation_id")?;
        let data_classification = *DataClassification::ALL
            .get(r.u8("data_classification")? as usize)
            .ok_or(CodecError::BadField("data_classification"))?;
        let retention_policy = r.string("retention_policy")?;
        let event_version = r.string("event_version")?;
        let ttl = r.opt_string("ttl")?;
        let processing_latency = match r.u8("processing_latency flag")? {
            0 => None,
            1 => Some(i32::from_le_bytes(
                r.take(4, "processing_latency")?.try_into().map_err(|_| CodecError::Truncated("processing_latency"))?,
            )),
            _ => return Err(CodecError::BadField("processing_latency flag")),
        };
        let details_text = r.string("details")?;
        let details: Map<String, Value> =
            serde_json::from_str(&details_text).map_err(|e| CodecError::BadDetails(e.to_string()))?;
        events.push(StoredEvent {
            id,
            ingested_at,
            seq,
            leaf_hash,
            event: NewEvent {
                event_id,
                event_id_supplied,
                timestamp,
                action,
                status,
                principal_id,
                organization_id,
                target_resource_type,
                target_resource_id,
                outcome_description,
                correlation_id,
                data_classification,
                retention_policy,
                event_version,
                ttl,
                processing_latency,
                details,
            },
        });
    }
    if r.pos != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - r.pos));
    }
    Ok((slot, Page { events, next_cursor }))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(CodecError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().map_err(|_| CodecError::Truncated(what))?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.take(8, what)?.try_into().map_err(|_| CodecError::Truncated(what))?))
    }
    fn time(&mut self, what: &'static str) -> Result<DateTime<Utc>, CodecError> {
        DateTime::from_timestamp_micros(self.i64(what)?).ok_or(CodecError::BadField(what))
    }
    fn uuid(&mut self, what: &'static str) -> Result<Uuid, CodecError> {
        let b: [u8; 16] = self.take(16, what)?.try_into().map_err(|_| CodecError::Truncated(what))?;
        Ok(Uuid::from_bytes(b))
    }
    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::BadField(what))
    }
    fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, CodecError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.string(what)?)),
            _ => Err(CodecError::BadField(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64, details: Value) -> StoredEvent {
        StoredEvent {
            id: i,
            ingested_at: DateTime::from_timestamp_micros(1_700_000_000_000_001 + i).unwrap(),
            seq: i * 2,
            leaf_hash: [i as u8; 32],
            event: NewEvent {
                event_id: Uuid::now_v7(),
                event_id_supplied: i % 2 == 0,
                timestamp: DateTime::from_timestamp_micros(1_699_999_999_000_123 - i).unwrap(),
                action: format!("action-{i}"),
                status: Status::ALL[(i % 3) as usize],
                principal_id: Some("user-ü".into()),
                organization_id: if i % 2 == 0 { Some("org".into()) } else { None },
                target_resource_type: None,
                target_resource_id: Some(String::new()),
                outcome_description: Some("done".into()),
                correlation_id: None,
                data_classification: DataClassification::ALL[(i % 5) as usize],
                retention_policy: "standard".into(),
                event_version: "1.0".into(),
                ttl: Some("30d".into()),
                processing_latency: if i % 2 == 0 { Some(-7) } else { None },
                details: details.as_object().cloned().unwrap_or_default(),
            },
        }
    }

    #[test]
    fn pages_round_trip_exactly_including_exact_numbers() {
        let details: Value = serde_json::from_str(
            r#"{"big": 123456789012345678901234567890.000100, "n": [1, 2.50, null], "s": "x\"y"}"#,
        )
        .unwrap();
        let page = Page {
            events: (0..5).map(|i| event(i, details.clone())).collect(),
            next_cursor: Some(Cursor {
                timestamp: DateTime::from_timestamp_micros(1_699_999_999_000_000).unwrap(),
                event_id: Uuid::now_v7(),
            }),
        };
        let bytes = encode("slot|x", &page);
        let (slot, back) = decode(&bytes).unwrap();
        assert_eq!(slot, "slot|x");
        assert_eq!(back, page);
        let text = serde_json::to_string(&back.events[0].event.details).unwrap();
        assert!(text.contains("123456789012345678901234567890.000100"), "{text}");

        let empty = Page::default();
        assert_eq!(decode(&encode("", &empty)).unwrap().1, empty);
    }

    #[test]
    fn damaged_values_are_rejected_not_misread() {
        let page = Page { events: vec![event(1, serde_json::json!({"a": 1}))], next_cursor: None };
        let bytes = encode("k", &page);
        for cut in [0, 3, 4, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode(&extra).unwrap_err(), CodecError::Trailing(1));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err(), CodecError::BadMagic);
    }
}
