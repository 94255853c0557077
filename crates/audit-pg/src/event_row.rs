//! The one definition of an `audit_log` row: its column list, the binary COPY encoding of an event, and the
//! mapping of a selected row back to a [`StoredEvent`]. The write path, the read path, integrity, retention
//! archives, evidence packs and the benchmarks all use these.

use std::pin::Pin;

use audit_core::event::{DataClassification, NewEvent, Status, StoredEvent};
use audit_core::{AuditError, AuditResult};
use chrono::{DateTime, Utc};
use postgres_types::{IsNull, ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

/// Every column of `audit_log`, in [`audit_core::event::STORED_FIELDS`] order: what COPY writes, what every full
/// read selects, what [`stored_event_from_row`] expects.
pub const EVENT_COLUMNS: &str = "id, event_id, \"timestamp\", ingested_at, action, status, principal_id, \
     organization_id, target_resource_type, target_resource_id, outcome_description, correlation_id, \
     data_classification, retention_policy, event_version, ttl, processing_latency, details, seq, leaf_hash";

/// The types of [`EVENT_COLUMNS`], in order, for binary COPY.
pub const COPY_TYPES: [Type; 20] = [
    Type::INT8,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::JSONB,
    Type::INT8,
    Type::BYTEA,
];

/// `COPY <table> (<EVENT_COLUMNS>) FROM STDIN (FORMAT binary)`.
pub fn copy_sql(table: &str) -> String {
    format!("COPY {table} ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// Pre-serialised JSON text sent as `jsonb` in binary format (version byte 1, then the text), so `details` is
/// serialised once, outside the write transaction.
#[derive(Debug)]
pub struct RawJsonb<'a>(pub &'a [u8]);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    postgres_types::to_sql_checked!();
}

/// One row to COPY: the event and what the store assigned to it.
#[derive(Debug, Clone, Copy)]
pub struct EventRow<'a> {
    /// Row id.
    pub id: i64,
    /// The validated event.
    pub event: &'a NewEvent,
    /// Ingestion time (µs).
    pub ingested_at: DateTime<Utc>,
    /// `details` as JSON text.
    pub details_json: &'a [u8],
    /// Position in the organisation's log.
    pub seq: i64,
    /// Leaf hash of the canonical form.
    pub leaf_hash: &'a [u8; 32],
}

/// Writes one row in [`EVENT_COLUMNS`] order.
pub async fn write_event_row(
    writer: Pin<&mut BinaryCopyInWriter>,
    row: &EventRow<'_>,
) -> Result<(), tokio_postgres::Error> {
    let e = row.event;
    let details = RawJsonb(row.details_json);
    let leaf: &[u8] = row.leaf_hash;
    writer
        .write(&[
            &row.id,
            &e.event_id,
            &e.timestamp,
            &row.ingested_at,
            &e.action,
            &e.status.as_str(),
            &e.principal_id,
            &e.organization_id,
            &e.target_resource_type,
            &e.target_resource_id,
            &e.outcome_description,
            &e.correlation_id,
            &e.data_classification.as_str(),
            &e.retention_policy,
            &e.event_version,
            &e.ttl,
            &e.processing_latency,
            &details,
            &row.seq,
            &leaf,
        ])
        .await
}

/// A row selected with [`EVENT_COLUMNS`] (in that order) as a [`StoredEvent`]. A value the schema's CHECKs
/// would never let in is an integrity error naming the event.
pub fn stored_event_from_row(r: &tokio_postgres::Row) -> AuditResult<StoredEvent> {
    let event_id: uuid::Uuid = get(r, 1)?;
    let bad = |what: &str| AuditError::integrity(format!("stored event {event_id} has {what}"));
    let status: &str = get(r, 5)?;
    let classification: &str = get(r, 12)?;
    let details = match get::<postgres_types::Json<serde_json::Value>>(r, 17)?.0 {
        serde_json::Value::Object(m) => m,
        _ => return Err(bad("details that are not an object")),
    };
    let leaf: &[u8] = get(r, 19)?;
    Ok(StoredEvent {
        id: get(r, 0)?,
        ingested_at: get(r, 3)?,
        seq: get(r, 18)?,
        leaf_hash: leaf.try_into().map_err(|_| bad("a leaf hash of wrong length"))?,
        event: NewEvent {
            event_id,
            event_id_supplied: true,
            timestamp: get(r, 2)?,
            action: get(r, 4)?,
            status: status.parse::<Status>().map_err(|_| bad("an unknown status"))?,
            principal_id: get(r, 6)?,
            organization_id: get(r, 7)?,
            target_resource_type: get(r, 8)?,
            target_resource_id: get(r, 9)?,
            outcome_description: get(r, 10)?,
            correlation_id: get(r, 11)?,
            data_classification: classification
                .parse::<DataClassification>()
                .map_err(|_| bad("an unknown classification"))?,
            retention_policy: get(r, 13)?,
            event_version: get(r, 14)?,
            ttl: get(r, 15)?,
            processing_latency: get(r, 16)?,
            details,
        },
    })
}

fn get<'a, T: postgres_types::FromSql<'a>>(r: &'a tokio_postgres::Row, i: usize) -> AuditResult<T> {
    r.try_get(i)
        .map_err(|e| AuditError::integrity(format!("reading column {i} of an audit_log row: {e}")).with_source(e))
}

#[cfg(test)]
mod tests {
    use diesel::QueryDsl;

    use super::*;
    use crate::schema::audit_log;

    #[test]
    fn the_diesel_table_lists_the_columns_in_event_order() {
        let sql = crate::build_query(&audit_log::table.select(audit_log::all_columns)).unwrap().sql;
        let list = &sql["SELECT ".len()..sql.find(" FROM").unwrap()];
        let diesel: Vec<&str> = list.split(", ").map(|c| c.rsplit('.').next().unwrap().trim_matches('"')).collect();
        let ours: Vec<&str> = EVENT_COLUMNS.split(',').map(|c| c.trim().trim_matches('"')).collect();
        assert_eq!(diesel, ours);
        assert_eq!(ours, audit_core::event::STORED_FIELDS);
        assert_eq!(ours.len(), COPY_TYPES.len());
    }
}
