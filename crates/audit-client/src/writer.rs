//! The durable write path: one transaction stores a batch of validated events with gap-free per-organisation
//! sequence numbers, leaf hashes and exactly-once semantics, through binary COPY.
//!
//! Transaction outline (all statements of a step are pipelined on one connection):
//! 1. make sure every organisation's log head row exists, then lock the heads `FOR UPDATE` in `log_id` order
//!    (one global order, so concurrent writers cannot deadlock);
//! 2. under those locks, look up which `(event_id, timestamp)` pairs are already stored (a concurrent writer of the
//!    same organisation has committed by now, so its rows are visible), and draw row ids from the sequence;
//! 3. assign `seq = head.size + k`, advance the heads, finish each leaf hash with its id, COPY the rows, COMMIT.
//!
//! Leaf hashes are pre-computed outside the transaction up to the row id (see `integrity::LeafPrefix`).

use std::collections::{BTreeMap, HashMap, HashSet};

use audit_core::integrity::LeafPrefix;
use audit_core::{AuditError, ErrorClass, NewEvent};
use chrono::{DateTime, Utc};
use futures::pin_mut;
use postgres_types::Type;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use uuid::Uuid;

use crate::pg::pg_error;

/// An event ready for the write transaction: validated, stamped and pre-hashed.
pub struct PreparedEvent {
    /// The validated event.
    pub event: NewEvent,
    /// Ingestion time (µs), part of the leaf.
    pub ingested_at: DateTime<Utc>,
    /// The leaf hash state up to the row id.
    pub prefix: LeafPrefix,
    /// `details` serialised once, outside the transaction, for COPY.
    details_json: Vec<u8>,
}

impl std::fmt::Debug for PreparedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedEvent").field("event_id", &self.event.event_id).finish_non_exhaustive()
    }
}

impl PreparedEvent {
    /// Stamps and pre-hashes an event.
    pub fn new(event: NewEvent, ingested_at: DateTime<Utc>) -> Self {
        let prefix = LeafPrefix::new(&event, ingested_at);
        let details_json = serde_json::to_vec(&event.details).expect("a JSON map serialises");
        Self { event, ingested_at, prefix, details_json }
    }

    fn key(&self) -> (Uuid, i64) {
        (self.event.event_id, self.event.timestamp.timestamp_micros())
    }

    fn log_id(&self) -> &str {
        self.event.organization_id.as_deref().unwrap_or("")
    }
}

/// Pre-serialised JSON text sent as `jsonb` in binary format (version byte 1, then the text).
#[derive(Debug)]
struct RawJsonb<'a>(&'a [u8]);

impl postgres_types::ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0);
        Ok(postgres_types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    postgres_types::to_sql_checked!();
}

/// How the write transaction looks for already stored `(event_id, timestamp)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateCheck {
    /// Look every caller-supplied key up before writing (needed when no unique index covers exactly
    /// `(event_id, timestamp)`, i.e. with the hash and list partition strategies).
    Always,
    /// Write directly and let the primary key refuse a duplicate (SQLSTATE 23505); the batch is then retried with
    /// [`DuplicateCheck::Always`]. Saves an index probe per event when duplicates are rare.
    Optimistic,
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored now, with its row id and its position in its organisation's log.
    Stored {
        /// Row id.
        id: i64,
        /// Position in the organisation's log.
        seq: i64,
    },
    /// An event with the same `(event_id, timestamp)` was already stored (earlier, by anyone); nothing was written.
    Duplicate,
    /// The database refused this event (a rule validation did not catch); the others were stored.
    Rejected(String),
}

/// Every column of `audit_log`, in [`audit_core::event::STORED_FIELDS`] order: what COPY writes and what the
/// integrity reader selects.
pub const EVENT_COLUMNS: &str = "id, event_id, \"timestamp\", ingested_at, action, status, principal_id, \
     organization_id, target_resource_type, target_resource_id, outcome_description, correlation_id, \
     data_classification, retention_policy, event_version, ttl, processing_latency, details, seq, leaf_hash";

/// The binary COPY statement of the write path.
static COPY_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("COPY audit_log ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"));

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

/// Result of one attempt at writing a batch.
pub struct BatchWrite {
    /// One outcome per input event, in input order.
    pub outcomes: Vec<WriteOutcome>,
}

/// Writes `events` in one transaction. Outcomes are in input order.
///
/// `earlier_ids` carries the row ids a previous attempt of the same batch assigned: when a connection was lost
/// during COMMIT, the retry finds those rows stored and reports them as `Stored` (they are ours), not `Duplicate`.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    events: &[PreparedEvent],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
    mode: DuplicateCheck,
) -> Result<BatchWrite, AuditError> {
    let started = std::time::Instant::now();
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; events.len()];

    // Duplicates inside the batch: the first occurrence wins.
    let mut seen: HashSet<(Uuid, i64)> = HashSet::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if !seen.insert(e.key()) {
            outcomes[i] = Some(WriteOutcome::Duplicate);
        }
    }

    let mut log_ids: Vec<&str> = events.iter().map(PreparedEvent::log_id).collect();
    log_ids.sort_unstable();
    log_ids.dedup();

    // Events whose key might already be stored: caller-supplied ids, and everything on a retry (an earlier attempt
    // may have committed without us hearing it).
    let retry = !earlier_ids.is_empty();
    let check: Vec<usize> = (0..events.len())
        .filter(|&i| {
            outcomes[i].is_none() && (retry || (mode == DuplicateCheck::Always && events[i].event.event_id_supplied))
        })
        .collect();
    let check_ids: Vec<Uuid> = check.iter().map(|&i| events[i].event.event_id).collect();
    let check_ts: Vec<DateTime<Utc>> = check.iter().map(|&i| events[i].event.timestamp).collect();

    let tx = client.transaction().await.map_err(|e| pg_error(e, "starting the write transaction"))?;

    // Creating missing heads and locking them is one statement: ON CONFLICT DO UPDATE takes the row lock whether
    // the row is new or not, in the statement's ORDER BY, which is the same for every writer (no deadlocks).
    let locked = tx
        .query(
            "INSERT INTO audit_log_heads (log_id) SELECT l FROM unnest($1::text[]) AS l ORDER BY l \
             ON CONFLICT (log_id) DO UPDATE SET size = audit_log_heads.size RETURNING log_id, size",
            &[&log_ids],
        )
        .await
        .map_err(|e| pg_error(e, "locking integrity log heads"))?;
    // Only now, under the locks, is the duplicate check exact: a concurrent writer of the same logs has committed.
    let existing = if check.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "SELECT a.event_id, a.\"timestamp\", a.id FROM audit_log a \
             JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(event_id, ts) \
               ON a.event_id = k.event_id AND a.\"timestamp\" = k.ts",
            &[&check_ids, &check_ts],
        )
        .await
        .map_err(|e| pg_error(e, "checking for already stored events"))?
    };

    let found: HashMap<(Uuid, i64), i64> = existing
        .iter()
        .map(|r| ((r.get::<_, Uuid>(0), r.get::<_, DateTime<Utc>>(1).timestamp_micros()), r.get::<_, i64>(2)))
        .collect();
    for &i in &check {
        if let Some(&id) = found.get(&events[i].key()) {
            let ours = earlier_ids.get(&events[i].key()) == Some(&id);
            outcomes[i] = Some(if ours {
                WriteOutcome::Stored { id, seq: -1 } // seq is filled below from the stored row
            } else {
                WriteOutcome::Duplicate
            });
        }
    }
    // Rows a lost-COMMIT attempt stored: report their real seq.
    let ours_found: Vec<usize> =
        (0..events.len()).filter(|&i| matches!(outcomes[i], Some(WriteOutcome::Stored { .. }))).collect();
    if !ours_found.is_empty() {
        let ids: Vec<i64> = ours_found
            .iter()
            .map(|&i| match outcomes[i] {
                Some(WriteOutcome::Stored { id, .. }) => id,
                _ => unreachable!("filtered above"),
            })
            .collect();
        let ts: Vec<DateTime<Utc>> = ours_found.iter().map(|&i| events[i].event.timestamp).collect();
        let rows = tx
            .query(
                "SELECT a.id, a.seq FROM audit_log a JOIN unnest($1::bigint[], $2::timestamptz[]) AS k(id, ts) \
                 ON a.id = k.id AND a.\"timestamp\" = k.ts",
                &[&ids, &ts],
            )
            .await
            .map_err(|e| pg_error(e, "reading back rows of an earlier attempt"))?;
        let seqs: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for &i in &ours_found {
            if let Some(WriteOutcome::Stored { id, seq }) = &mut outcomes[i] {
                *seq = seqs.get(id).copied().unwrap_or(-1);
            }
        }
    }

    let to_write: Vec<usize> = (0..events.len()).filter(|&i| outcomes[i].is_none()).collect();
    if to_write.is_empty() {
        tx.commit().await.map_err(|e| pg_error(e, "committing"))?;
        return Ok(BatchWrite { outcomes: outcomes.into_iter().map(|o| o.expect("all decided")).collect() });
    }

    // Sequence numbers: per log, in input order, after the locked head.
    let mut heads: BTreeMap<String, i64> = locked.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect();
    let mut seqs = Vec::with_capacity(to_write.len());
    for &i in &to_write {
        let head = heads
            .get_mut(events[i].log_id())
            .ok_or_else(|| AuditError::permanent("integrity log head row vanished inside the write transaction"))?;
        seqs.push(*head);
        *head += 1;
    }
    let head_ids: Vec<&str> = heads.keys().map(String::as_str).collect();
    let head_sizes: Vec<i64> = heads.values().copied().collect();
    let n = to_write.len() as i64;
    let advance_params: [&(dyn postgres_types::ToSql + Sync); 2] = [&head_ids, &head_sizes];
    let draw_params: [&(dyn postgres_types::ToSql + Sync); 1] = [&n];
    let advance = tx.execute(
        "UPDATE audit_log_heads h SET size = v.size FROM unnest($1::text[], $2::bigint[]) AS v(log_id, size) \
         WHERE h.log_id = v.log_id",
        &advance_params,
    );
    let draw_ids = tx.query("SELECT nextval('audit_log_id_seq') FROM generate_series(1, $1::bigint)", &draw_params);
    let (advanced, ids) = tokio::join!(advance, draw_ids);
    advanced.map_err(|e| pg_error(e, "advancing integrity log heads"))?;
    let ids: Vec<i64> = ids.map_err(|e| pg_error(e, "drawing row ids"))?.iter().map(|r| r.get::<_, i64>(0)).collect();

    let sink = tx.copy_in(COPY_SQL.as_str()).await.map_err(|e| pg_error(e, "starting COPY"))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    for (k, &i) in to_write.iter().enumerate() {
        let p = &events[i];
        let e = &p.event;
        let id = ids[k];
        let leaf = p.prefix.finish(id);
        let details = RawJsonb(&p.details_json);
        let leaf_ref: &[u8] = &leaf;
        writer
            .as_mut()
            .write(&[
                &id,
                &e.event_id,
                &e.timestamp,
                &p.ingested_at,
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
                &seqs[k],
                &leaf_ref,
            ])
            .await
            .map_err(|e| pg_error(e, "writing COPY rows"))?;
        outcomes[i] = Some(WriteOutcome::Stored { id, seq: seqs[k] });
        earlier_ids.insert(p.key(), id);
    }
    writer.finish().await.map_err(|e| pg_error(e, "storing events"))?;
    let copied = started.elapsed();
    tx.commit().await.map_err(|e| pg_error(e, "committing"))?;
    tracing::debug!(
        events = events.len(),
        checked = check.len(),
        until_copy_done_us = copied.as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "write transaction committed"
    );
    metrics::histogram!("audit_db_write_transaction_seconds").record(started.elapsed().as_secs_f64());
    Ok(BatchWrite { outcomes: outcomes.into_iter().map(|o| o.expect("all decided")).collect() })
}

/// How a batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomicity {
    /// Events the database refuses are isolated (the batch is split in halves until they are alone) so that they
    /// never block valid events beside them: the bulk and group-commit paths.
    PerEvent,
    /// All events commit together or none does: `AuditClient::transaction`.
    AllOrNothing,
}

/// Writes a batch; a unique violation (an already stored key the optimistic check let through, or a concurrent
/// duplicate) is retried as a whole with per-event lookups. With [`Atomicity::PerEvent`], a refusal of the whole
/// COPY with another input-class SQLSTATE splits the batch until the refused events are alone.
pub async fn write_isolating(
    client: &mut tokio_postgres::Client,
    events: &[PreparedEvent],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
    mut mode: DuplicateCheck,
    atomicity: Atomicity,
) -> Result<Vec<WriteOutcome>, AuditError> {
    let mut unique_retries = 0;
    loop {
        match write_batch(client, events, earlier_ids, mode).await {
            Ok(w) => return Ok(w.outcomes),
            Err(e) if e.sqlstate.as_deref() == Some("23505") && unique_retries < 3 => {
                // A key is stored already: by an earlier batch (optimistic mode skipped the lookup), or by a
                // concurrent writer between our lookup and our COPY. The retry looks every key up. `earlier_ids`
                // is kept: it only ever matches rows an attempt of ours really committed.
                unique_retries += 1;
                mode = DuplicateCheck::Always;
                continue;
            }
            Err(e)
                if e.class == ErrorClass::InvalidInput && e.sqlstate.is_some() && atomicity == Atomicity::PerEvent =>
            {
                if events.len() == 1 {
                    return Ok(vec![WriteOutcome::Rejected(e.message)]);
                }
                let mid = events.len() / 2;
                let mut left = Box::pin(write_isolating(client, &events[..mid], earlier_ids, mode, atomicity)).await?;
                let right = Box::pin(write_isolating(client, &events[mid..], earlier_ids, mode, atomicity)).await?;
                left.extend(right);
                return Ok(left);
            }
            Err(e) => return Err(e),
        }
    }
}
