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

use audit_core::metrics as metric;
use audit_core::{AuditError, ErrorClass, NewEvent, SqlState};
use audit_integrity::LeafPrefix;
use audit_pg::{COPY_TYPES, EventRow, copy_sql, pg_error, write_event_row};
use chrono::{DateTime, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use uuid::Uuid;

use crate::ack::{CommitLsn, Rejection};

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

/// How the write transaction looks for already stored `(event_id, timestamp)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DuplicateCheck {
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
    Rejected(Rejection),
}

/// The binary COPY statement of the write path.
static COPY_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| copy_sql("audit_log"));

/// Keys of the events whose `(event_id, timestamp)` may be stored already, and the in-batch duplicates.
struct Plan {
    /// One outcome per event, decided so far (in-batch duplicates).
    outcomes: Vec<Option<WriteOutcome>>,
    /// Indexes of the events to look up under the head locks.
    check: Vec<usize>,
    /// The logs (organisations; `""` the shared log) the batch writes to, sorted: the global lock order.
    log_ids: Vec<String>,
}

/// Decides, before any statement, what needs looking up: the first occurrence of a key in the batch wins; a key
/// might already be stored when the caller supplied the id (and no unique index will refuse it), or on a retry
/// (an earlier attempt may have committed without us hearing it).
fn plan(events: &[PreparedEvent], retry: bool, mode: DuplicateCheck) -> Plan {
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; events.len()];
    let mut seen: HashSet<(Uuid, i64)> = HashSet::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if !seen.insert(e.key()) {
            outcomes[i] = Some(WriteOutcome::Duplicate);
        }
    }
    let check = (0..events.len())
        .filter(|&i| {
            outcomes[i].is_none() && (retry || (mode == DuplicateCheck::Always && events[i].event.event_id_supplied))
        })
        .collect();
    let mut log_ids: Vec<String> = events.iter().map(|e| e.log_id().to_string()).collect();
    log_ids.sort_unstable();
    log_ids.dedup();
    Plan { outcomes, check, log_ids }
}

/// Creates missing log heads and locks them, in one statement: ON CONFLICT DO UPDATE takes the row lock whether the
/// row is new or not, in the statement's ORDER BY, which is the same for every writer (so no deadlocks). Returns
/// each log's next sequence number.
async fn lock_heads(tx: &tokio_postgres::Client, log_ids: &[String]) -> Result<BTreeMap<String, i64>, AuditError> {
    let rows = tx
        .query(
            "INSERT INTO audit_log_heads (log_id) SELECT l FROM unnest($1::text[]) AS l ORDER BY l \
             ON CONFLICT (log_id) DO UPDATE SET size = audit_log_heads.size RETURNING log_id, size",
            &[&log_ids],
        )
        .await
        .map_err(|e| pg_error(e, "locking integrity log heads"))?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect())
}

/// Under the head locks (a concurrent writer of the same logs has committed by now, so its rows are visible): which
/// of the checked keys are stored, and as which row. A key found stored is *ours* when an earlier attempt of this
/// batch assigned that very row id (its COMMIT reached the server but the answer was lost): it is reported as
/// stored, with the seq it got; otherwise it is a duplicate.
async fn find_stored(
    tx: &tokio_postgres::Client,
    events: &[PreparedEvent],
    plan: &mut Plan,
    earlier_ids: &HashMap<(Uuid, i64), i64>,
) -> Result<(), AuditError> {
    if plan.check.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = plan.check.iter().map(|&i| events[i].event.event_id).collect();
    let ts: Vec<DateTime<Utc>> = plan.check.iter().map(|&i| events[i].event.timestamp).collect();
    let rows = tx
        .query(
            "SELECT a.event_id, a.\"timestamp\", a.id, a.seq FROM audit_log a \
             JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(event_id, ts) \
               ON a.event_id = k.event_id AND a.\"timestamp\" = k.ts",
            &[&ids, &ts],
        )
        .await
        .map_err(|e| pg_error(e, "checking for already stored events"))?;
    let found: HashMap<(Uuid, i64), (i64, i64)> = rows
        .iter()
        .map(|r| {
            let key = (r.get::<_, Uuid>(0), r.get::<_, DateTime<Utc>>(1).timestamp_micros());
            (key, (r.get::<_, i64>(2), r.get::<_, i64>(3)))
        })
        .collect();
    for &i in &plan.check {
        if let Some(&(id, seq)) = found.get(&events[i].key()) {
            let ours = earlier_ids.get(&events[i].key()) == Some(&id);
            plan.outcomes[i] = Some(if ours { WriteOutcome::Stored { id, seq } } else { WriteOutcome::Duplicate });
        }
    }
    Ok(())
}

/// Sequence numbers per log, in input order, after the locked heads; advances `heads` to the new sizes.
fn assign_seqs(
    events: &[PreparedEvent],
    to_write: &[usize],
    heads: &mut BTreeMap<String, i64>,
) -> Result<Vec<i64>, AuditError> {
    to_write
        .iter()
        .map(|&i| {
            let head = heads
                .get_mut(events[i].log_id())
                .ok_or_else(|| AuditError::permanent("integrity log head row vanished inside the write transaction"))?;
            let seq = *head;
            *head += 1;
            Ok(seq)
        })
        .collect()
}

/// Stores the new head sizes and draws `n` row ids, pipelined.
async fn advance_heads_and_draw_ids(
    tx: &tokio_postgres::Client,
    heads: &BTreeMap<String, i64>,
    n: i64,
) -> Result<Vec<i64>, AuditError> {
    let head_ids: Vec<&str> = heads.keys().map(String::as_str).collect();
    let head_sizes: Vec<i64> = heads.values().copied().collect();
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
    Ok(ids.map_err(|e| pg_error(e, "drawing row ids"))?.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// COPYs the rows, finishing each leaf hash with its row id; records the ids in `earlier_ids` (for a retry after a
/// lost COMMIT) and the outcomes.
async fn copy_rows(
    tx: &tokio_postgres::Client,
    events: &[PreparedEvent],
    rows: &[(usize, i64, i64)],
    outcomes: &mut [Option<WriteOutcome>],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
) -> Result<(), AuditError> {
    let sink = tx.copy_in(COPY_SQL.as_str()).await.map_err(|e| pg_error(e, "starting COPY"))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    for &(i, id, seq) in rows {
        let p = &events[i];
        let leaf = p.prefix.finish(id);
        let row = EventRow {
            id,
            event: &p.event,
            ingested_at: p.ingested_at,
            details_json: &p.details_json,
            seq,
            leaf_hash: &leaf,
        };
        write_event_row(writer.as_mut(), &row).await.map_err(|e| pg_error(e, "writing COPY rows"))?;
        outcomes[i] = Some(WriteOutcome::Stored { id, seq });
        earlier_ids.insert(p.key(), id);
    }
    writer.finish().await.map_err(|e| pg_error(e, "storing events"))?;
    Ok(())
}

/// The statements that store `events` inside a transaction the caller has begun on `tx` (the group-commit path
/// begins and commits its own; a caller's transaction keeps it open across several writes). Outcomes are in input
/// order.
///
/// `earlier_ids` carries the row ids a previous attempt of the same batch assigned: when a connection was lost
/// during COMMIT, the retry finds those rows stored and reports them as `Stored` (they are ours), not `Duplicate`.
pub(crate) async fn write_in_transaction(
    tx: &tokio_postgres::Client,
    events: &[PreparedEvent],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
    mode: DuplicateCheck,
) -> Result<Vec<WriteOutcome>, AuditError> {
    let mut plan = plan(events, !earlier_ids.is_empty(), mode);
    let mut heads = lock_heads(tx, &plan.log_ids).await?;
    find_stored(tx, events, &mut plan, earlier_ids).await?;
    let to_write: Vec<usize> = (0..events.len()).filter(|&i| plan.outcomes[i].is_none()).collect();
    if !to_write.is_empty() {
        let seqs = assign_seqs(events, &to_write, &mut heads)?;
        let ids = advance_heads_and_draw_ids(tx, &heads, to_write.len() as i64).await?;
        let rows: Vec<(usize, i64, i64)> =
            to_write.iter().zip(ids).zip(seqs).map(|((&i, id), seq)| (i, id, seq)).collect();
        copy_rows(tx, events, &rows, &mut plan.outcomes, earlier_ids).await?;
    }
    Ok(plan.outcomes.into_iter().map(|o| o.expect("every event decided")).collect())
}

/// The primary's WAL position now: after a COMMIT, at or past its commit record (the read-your-writes token).
pub(crate) async fn current_wal_lsn(client: &tokio_postgres::Client) -> Result<CommitLsn, AuditError> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| pg_error(e, "reading the commit's WAL position"))?;
    row.get::<_, String>(0).parse().map_err(AuditError::permanent)
}

/// Writes `events` in one transaction of their own, commits it, and returns the outcomes with the commit's WAL
/// position.
pub(crate) async fn write_batch(
    client: &mut tokio_postgres::Client,
    events: &[PreparedEvent],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
    mode: DuplicateCheck,
) -> Result<(Vec<WriteOutcome>, CommitLsn), AuditError> {
    let started = std::time::Instant::now();
    // The transaction guard rolls back if this future is dropped (a deadline) before COMMIT was sent.
    let tx = client.transaction().await.map_err(|e| pg_error(e, "starting the write transaction"))?;
    let outcomes = write_in_transaction(tx.client(), events, earlier_ids, mode).await?;
    let written = started.elapsed();
    tx.commit().await.map_err(|e| pg_error(e, "committing"))?;
    let lsn = current_wal_lsn(client).await?;
    tracing::debug!(
        events = events.len(),
        until_copy_done_us = written.as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "write transaction committed"
    );
    metrics::histogram!(metric::WRITE_TRANSACTION_DURATION).record(started.elapsed().as_secs_f64());
    Ok((outcomes, lsn))
}

/// How a batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Atomicity {
    /// Events the database refuses are isolated (the batch is split in halves until they are alone) so that they
    /// never block valid events beside them: the bulk and group-commit paths.
    PerEvent,
    /// All events commit together or none does: `AuditClient::begin` transactions.
    AllOrNothing,
}

/// Writes a batch in its own transaction(s); with [`Atomicity::PerEvent`], events the database refuses never block
/// valid events beside them. A unique violation (an already stored key the optimistic check let through, or a concurrent duplicate) is
/// retried as a whole with per-event lookups; a refusal of the whole COPY with another input-class SQLSTATE splits
/// the batch in halves until the refused events are alone. Returns the outcomes and the latest commit's WAL
/// position.
pub(crate) async fn write_isolating(
    client: &mut tokio_postgres::Client,
    events: &[PreparedEvent],
    earlier_ids: &mut HashMap<(Uuid, i64), i64>,
    mut mode: DuplicateCheck,
    atomicity: Atomicity,
) -> Result<(Vec<WriteOutcome>, Option<CommitLsn>), AuditError> {
    let mut unique_retries = 0;
    loop {
        match write_batch(client, events, earlier_ids, mode).await {
            Ok((outcomes, lsn)) => return Ok((outcomes, Some(lsn))),
            Err(e) if e.sqlstate() == Some(SqlState::UNIQUE_VIOLATION) && unique_retries < 3 => {
                // A key is stored already: by an earlier batch (optimistic mode skipped the lookup), or by a
                // concurrent writer between our lookup and our COPY. The retry looks every key up. `earlier_ids`
                // is kept: it only ever matches rows an attempt of ours really committed.
                unique_retries += 1;
                mode = DuplicateCheck::Always;
            }
            Err(e)
                if e.class() == ErrorClass::InvalidInput
                    && e.sqlstate().is_some()
                    && atomicity == Atomicity::PerEvent =>
            {
                if events.len() == 1 {
                    let rejection = Rejection { reason: e.message().to_string(), sqlstate: e.sqlstate() };
                    return Ok((vec![WriteOutcome::Rejected(rejection)], None));
                }
                let mid = events.len() / 2;
                let (mut left, l) =
                    Box::pin(write_isolating(client, &events[..mid], earlier_ids, mode, atomicity)).await?;
                let (right, r) =
                    Box::pin(write_isolating(client, &events[mid..], earlier_ids, mode, atomicity)).await?;
                left.extend(right);
                return Ok((left, l.max(r)));
            }
            Err(e) => return Err(e),
        }
    }
}
