//! The "no library" side of the ingest and retention baselines: the same workload rows turned into the exact
//! column values audit-client writes (id, seq and a 32-byte leaf hash included, computed before any timed region),
//! written with plain binary COPY or one plain INSERT per transaction.

use std::collections::HashMap;
use std::pin::pin;

use anyhow::Context as _;
use audit_core::{NewEvent, StoredEvent, Validator};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql};

/// The column list and types of the write path's COPY, so the baseline writes exactly the same columns.
pub(crate) use audit_pg::{COPY_TYPES as TYPES, EVENT_COLUMNS as COLUMNS};

/// One row ready to write.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The validated event.
    pub event: NewEvent,
    /// Ingestion time.
    pub ingested_at: DateTime<Utc>,
    /// Row id.
    pub id: i64,
    /// Position in the organisation's log.
    pub seq: i64,
    /// A 32-byte leaf hash (SHA-256 of the event's JSON and id: the same size as the real leaf; how it is computed
    /// does not matter to the database, and it is computed outside every timed region).
    pub leaf: [u8; 32],
}

impl Row {
    /// The row as the stored event the read path would return (for realistic cache pages).
    pub(crate) fn stored(&self) -> StoredEvent {
        StoredEvent {
            id: self.id,
            ingested_at: self.ingested_at,
            seq: self.seq,
            leaf_hash: self.leaf,
            event: self.event.clone(),
        }
    }
}

/// Turns workload events into rows with ids and per-organisation sequence numbers, like the write path does.
#[derive(Debug)]
pub(crate) struct RowFactory {
    validator: Validator,
    now: DateTime<Utc>,
    next_id: i64,
    seqs: HashMap<String, i64>,
}

impl RowFactory {
    /// Ids start at `first_id`; `now` is the validation clock and the ingestion time.
    pub(crate) fn new(now: DateTime<Utc>, first_id: i64) -> Self {
        let now = audit_core::event::truncate_to_micros(now);
        Self { validator: Validator::default(), now, next_id: first_id, seqs: HashMap::new() }
    }

    /// Validates `v` (a workload event, always valid) and numbers it.
    pub(crate) fn make(&mut self, v: &Value) -> anyhow::Result<Row> {
        let event = self.validator.validate_value(v.clone(), self.now).context("a workload event failed validation")?;
        let id = self.next_id;
        self.next_id += 1;
        let seq = self.seqs.entry(event.organization_id.clone().unwrap_or_default()).or_insert(0);
        let this_seq = *seq;
        *seq += 1;
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(serde_json::to_vec(v).unwrap_or_default());
        h.update(id.to_be_bytes());
        Ok(Row { event, ingested_at: self.now, id, seq: this_seq, leaf: h.finalize().into() })
    }

    /// Makes rows of a whole slice.
    pub(crate) fn make_all(&mut self, values: &[Value]) -> anyhow::Result<Vec<Row>> {
        values.iter().map(|v| self.make(v)).collect()
    }
}

/// Binary COPY of `rows` into `table` in one transaction (`BEGIN; COPY …; COMMIT`).
pub(crate) async fn copy_rows(client: &mut tokio_postgres::Client, table: &str, rows: &[Row]) -> anyhow::Result<u64> {
    let tx = client.transaction().await.context("BEGIN")?;
    let sink =
        tx.copy_in(&format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)")).await.context("starting COPY")?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for r in rows {
        // Serialised here, inside the timed COPY, as a plain COPY client would.
        let details_json = serde_json::to_vec(&r.event.details).context("serialising details")?;
        let row = audit_pg::EventRow {
            id: r.id,
            event: &r.event,
            ingested_at: r.ingested_at,
            details_json: &details_json,
            seq: r.seq,
            leaf_hash: &r.leaf,
        };
        audit_pg::write_event_row(writer.as_mut(), &row).await.context("writing COPY rows")?;
    }
    let n = writer.as_mut().finish().await.context("finishing COPY")?;
    tx.commit().await.context("COMMIT")?;
    Ok(n)
}

/// The seed's way of storing one event: a plain `INSERT` of one row (the id from the column default), in its own
/// transaction (autocommit).
pub(crate) const INSERT_SQL: &str = "INSERT INTO audit_log (event_id, \"timestamp\", ingested_at, action, status, principal_id, \
     organization_id, target_resource_type, target_resource_id, outcome_description, correlation_id, \
     data_classification, retention_policy, event_version, ttl, processing_latency, details, seq, leaf_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";

/// Runs [`INSERT_SQL`] for one row with a prepared statement.
pub(crate) async fn insert_one(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    r: &Row,
    event_id: uuid::Uuid,
) -> Result<u64, tokio_postgres::Error> {
    let e = &r.event;
    let details = Json(&e.details);
    let leaf: &[u8] = &r.leaf;
    let status = e.status.as_str();
    let class = e.data_classification.as_str();
    let params: [&(dyn ToSql + Sync); 19] = [
        &event_id,
        &e.timestamp,
        &r.ingested_at,
        &e.action,
        &status,
        &e.principal_id,
        &e.organization_id,
        &e.target_resource_type,
        &e.target_resource_id,
        &e.outcome_description,
        &e.correlation_id,
        &class,
        &e.retention_policy,
        &e.event_version,
        &e.ttl,
        &e.processing_latency,
        &details,
        &r.seq,
        &leaf,
    ];
    client.execute(stmt, &params).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_server::workload::{Workload, WorkloadShape};

    #[test]
    fn rows_are_numbered_like_the_write_path() {
        let now = Utc::now();
        let values: Vec<Value> = Workload::new(3, WorkloadShape::default(), now).take(500).collect();
        let mut f = RowFactory::new(now, 1);
        let rows = f.make_all(&values).unwrap();
        assert_eq!(rows.first().map(|r| r.id), Some(1));
        assert_eq!(rows.last().map(|r| r.id), Some(500));
        // Per organisation, seq is 0, 1, 2, … in input order.
        let mut per_org: HashMap<Option<String>, Vec<i64>> = HashMap::new();
        for r in &rows {
            per_org.entry(r.event.organization_id.clone()).or_default().push(r.seq);
        }
        for seqs in per_org.values() {
            assert_eq!(*seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
        }
        // Same input, same leaf; different id, different leaf.
        let again = RowFactory::new(now, 1).make_all(&values[..1]).unwrap();
        assert_eq!(again[0].leaf, rows[0].leaf);
        assert_ne!(rows[0].leaf, rows[1].leaf);
    }
}
