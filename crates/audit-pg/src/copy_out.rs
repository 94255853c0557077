//! Reading `audit_log` rows with binary COPY out, without going through `tokio_postgres::Row` or a
//! `serde_json::Value`: the fields are borrowed from the COPY bytes as PostgreSQL sent them, which is what lets
//! `verify` recompute leaves at memory speed (`audit_integrity::canonical::leaf_hash_raw`).
//!
//! Format (PostgreSQL docs, "COPY … Binary Format"): an 11-byte signature, a 32-bit flags word, a 32-bit header
//! extension length and that many bytes; then tuples, each a 16-bit field count followed by, per field, a 32-bit
//! length (-1: NULL) and that many bytes in the type's binary send format; a field count of -1 ends the data.

use audit_core::event::{DataClassification, Status};
use audit_core::{AuditError, AuditResult};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event_row::EVENT_COLUMNS;

/// The signature that opens every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// `COPY (SELECT <EVENT_COLUMNS> FROM audit_log WHERE <predicate> ORDER BY seq) TO STDOUT (FORMAT binary)`.
/// COPY takes no parameters: `predicate` must be built from quoted literals ([`crate::quote_literal`]) and numbers.
pub fn copy_out_events_sql(predicate: &str) -> String {
    format!("COPY (SELECT {EVENT_COLUMNS} FROM audit_log WHERE {predicate} ORDER BY seq) TO STDOUT (FORMAT binary)")
}

fn malformed(what: impl std::fmt::Display) -> AuditError {
    AuditError::integrity(format!("binary COPY data from the server is malformed: {what}"))
}

/// The tuples of a complete binary COPY stream held in memory.
#[derive(Debug)]
pub struct BinaryTuples<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BinaryTuples<'a> {
    /// Checks the header; `buf` is the concatenation of every CopyData message of one COPY.
    pub fn new(buf: &'a [u8]) -> AuditResult<Self> {
        if buf.len() < 19 || &buf[..11] != SIGNATURE {
            return Err(malformed("no PGCOPY signature"));
        }
        let ext = u32::from_be_bytes(buf[15..19].try_into().expect("4 bytes")) as usize;
        let pos = 19usize.checked_add(ext).filter(|p| *p <= buf.len()).ok_or_else(|| malformed("header extension"))?;
        Ok(Self { buf, pos })
    }

    fn take(&mut self, n: usize) -> AuditResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| malformed("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads the next tuple's fields into `fields` (`None`: SQL NULL); `false` at the end of the data.
    pub fn next_tuple(&mut self, fields: &mut Vec<Option<&'a [u8]>>) -> AuditResult<bool> {
        fields.clear();
        if self.pos == self.buf.len() {
            return Ok(false);
        }
        let count = i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        if count < 0 {
            return Ok(false);
        }
        for _ in 0..count {
            let len = i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
            fields.push(if len < 0 { None } else { Some(self.take(len as usize)?) });
        }
        Ok(true)
    }
}

/// An `audit_log` row as binary COPY sends it ([`EVENT_COLUMNS`] order), borrowed from the COPY bytes. `details`
/// is the JSON text PostgreSQL prints for the jsonb value, not parsed.
#[derive(Debug, Clone, Copy)]
pub struct RawEventRow<'a> {
    /// Row id.
    pub id: i64,
    /// The event id.
    pub event_id: Uuid,
    /// Event time.
    pub timestamp: DateTime<Utc>,
    /// Ingestion time.
    pub ingested_at: DateTime<Utc>,
    /// Action.
    pub action: &'a str,
    /// Status.
    pub status: Status,
    /// Principal.
    pub principal_id: Option<&'a str>,
    /// Organisation (the log).
    pub organization_id: Option<&'a str>,
    /// Target resource type.
    pub target_resource_type: Option<&'a str>,
    /// Target resource id.
    pub target_resource_id: Option<&'a str>,
    /// Outcome description.
    pub outcome_description: Option<&'a str>,
    /// Correlation id.
    pub correlation_id: Option<&'a str>,
    /// Classification.
    pub data_classification: DataClassification,
    /// Retention policy.
    pub retention_policy: &'a str,
    /// Event version.
    pub event_version: &'a str,
    /// TTL.
    pub ttl: Option<&'a str>,
    /// Processing latency.
    pub processing_latency: Option<i32>,
    /// `details` as JSON text (jsonb's output form).
    pub details: &'a str,
    /// Position in the log.
    pub seq: i64,
    /// Stored leaf hash.
    pub leaf_hash: [u8; 32],
}

impl<'a> RawEventRow<'a> {
    /// Decodes one tuple of [`copy_out_events_sql`]. A value the schema would never let in is an integrity error
    /// naming the event (as [`crate::stored_event_from_row`] does).
    pub fn from_fields(f: &[Option<&'a [u8]>]) -> AuditResult<Self> {
        if f.len() != 20 {
            return Err(malformed(format!("{} fields in an audit_log row, expected 20", f.len())));
        }
        let event_id = Uuid::from_bytes(
            f[1].and_then(|b| b.try_into().ok()).ok_or_else(|| malformed("an event_id that is not 16 bytes"))?,
        );
        let bad = |what: &str| AuditError::integrity(format!("stored event {event_id} has {what}"));
        let int8 = |i: usize, name: &str| -> AuditResult<i64> {
            f[i].and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).ok_or_else(|| bad(&format!("no valid {name}")))
        };
        let time = |i: usize, name: &str| -> AuditResult<DateTime<Utc>> {
            int8(i, name)?
                .checked_add(PG_EPOCH_MICROS)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| bad(&format!("a {name} out of range")))
        };
        let opt_text = |i: usize| -> AuditResult<Option<&'a str>> {
            f[i].map(|b| std::str::from_utf8(b).map_err(|_| bad(&format!("column {i} that is not UTF-8")))).transpose()
        };
        let text =
            |i: usize| -> AuditResult<&'a str> { opt_text(i)?.ok_or_else(|| bad(&format!("a NULL column {i}"))) };
        let details = match f[17] {
            Some([1, json @ ..]) => std::str::from_utf8(json).map_err(|_| bad("details that are not UTF-8"))?,
            _ => return Err(bad("details that are not jsonb of version 1")),
        };
        Ok(Self {
            id: int8(0, "id")?,
            event_id,
            timestamp: time(2, "timestamp")?,
            ingested_at: time(3, "ingested_at")?,
            action: text(4)?,
            status: text(5)?.parse().map_err(|_| bad("an unknown status"))?,
            principal_id: opt_text(6)?,
            organization_id: opt_text(7)?,
            target_resource_type: opt_text(8)?,
            target_resource_id: opt_text(9)?,
            outcome_description: opt_text(10)?,
            correlation_id: opt_text(11)?,
            data_classification: text(12)?.parse().map_err(|_| bad("an unknown classification"))?,
            retention_policy: text(13)?,
            event_version: text(14)?,
            ttl: opt_text(15)?,
            processing_latency: match f[16] {
                None => None,
                Some(b) => {
                    Some(i32::from_be_bytes(b.try_into().map_err(|_| bad("a processing_latency of wrong size"))?))
                }
            },
            details,
            seq: int8(18, "seq")?,
            leaf_hash: f[19].and_then(|b| b.try_into().ok()).ok_or_else(|| bad("a leaf hash of wrong length"))?,
        })
    }
}
