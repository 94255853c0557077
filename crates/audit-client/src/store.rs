//! Storing a batch (the group-commit flush and each chunk of a bulk insert): partitions first, then one write
//! transaction under the resilience policy, waiting out an outage up to `ingest.outagePatienceMs`, then cache
//! invalidation and counters — all before any caller is told its event is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use audit_core::ReadRouter;
use audit_core::traits::{PartitionProvisioner, QueryCache, ResiliencePolicy, WriteMark};
use audit_core::{AuditError, AuditResult, ErrorClass, ErrorKind, RetrySchedule};
use audit_pg::PooledConn;
use backon::Retryable as _;
use chrono::{DateTime, Datelike, Utc};

use crate::ack::CommitLsn;
use crate::client::{EarlierIds, Inner};
use crate::writer::{Atomicity, DuplicateCheck, PreparedEvent, WriteOutcome, write_isolating};

/// A key per calendar month: partitions are never shorter than a month, so a month seen once is covered.
fn month_key(t: DateTime<Utc>) -> i32 {
    t.year() * 12 + t.month0() as i32
}

impl<P, C, R, Q> Inner<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// Stores a batch: partitions, one transaction under the resilience policy, cache invalidation, counters.
    /// Returns the outcomes and the WAL position of the commit (`None` when nothing was committed).
    pub(crate) async fn store(
        self: &Arc<Self>,
        events: Vec<PreparedEvent>,
        atomicity: Atomicity,
    ) -> AuditResult<(Vec<WriteOutcome>, Option<CommitLsn>)> {
        let n = events.len();
        self.patiently(atomicity, n, || self.ensure_partitions(&events, false)).await?;
        let events = Arc::new(events);
        let earlier: EarlierIds = Arc::new(tokio::sync::Mutex::new(Default::default()));
        let mut attempt = self.patiently(atomicity, n, || self.store_once(&events, &earlier, atomicity)).await;
        if let Err(e) = &attempt
            && e.kind() == ErrorKind::NoPartition
        {
            // A partition we believed in is gone (dropped by retention or by hand): re-check all and retry.
            self.partitions.forget_known();
            self.ensure_partitions(&events, true).await?;
            attempt = self.patiently(atomicity, n, || self.store_once(&events, &earlier, atomicity)).await;
        }
        let (outcomes, lsn) = attempt?;
        self.after_commit(&events, &outcomes).await;
        Ok((outcomes, lsn))
    }

    /// What follows every commit, before the writers are acknowledged: the cache learns what was written (so no
    /// answer misses a committed event), counters move.
    pub(crate) async fn after_commit(&self, events: &[PreparedEvent], outcomes: &[WriteOutcome]) {
        let mut marks = Vec::new();
        let (mut stored, mut dups, mut rejected) = (0u64, 0u64, 0u64);
        for (p, o) in events.iter().zip(outcomes) {
            match o {
                WriteOutcome::Stored { .. } => {
                    stored += 1;
                    marks.push(WriteMark {
                        organization_id: p.event.organization_id.clone(),
                        timestamp_micros: p.event.timestamp.timestamp_micros(),
                    });
                }
                WriteOutcome::Duplicate => dups += 1,
                WriteOutcome::Rejected(_) => rejected += 1,
            }
        }
        if !marks.is_empty() {
            self.cache.invalidate(&marks).await;
        }
        self.ops.count_written(stored, dups, rejected);
    }

    /// Runs `op` again while the database is unavailable, up to `ingest.outagePatienceMs`, saying so (see
    /// [`Self::warn_outage`]). Writes wait here instead of failing their callers; the events stay in memory (bounded
    /// by the insert queue). Only for operations that may be repeated. A transaction is its caller's unit of work:
    /// an outage is reported to the caller at once (only the resilience policy retries it), as the caller may hold
    /// other state that depends on the outcome.
    async fn patiently<T, F, Fut>(&self, atomicity: Atomicity, events: usize, op: F) -> AuditResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = AuditResult<T>>,
    {
        let patience = match atomicity {
            Atomicity::PerEvent => Duration::from_millis(self.config.ingest.outage_patience_ms),
            Atomicity::AllOrNothing => Duration::ZERO,
        };
        let schedule = RetrySchedule::patient(patience, Duration::from_millis(100), Duration::from_secs(1));
        let started = Instant::now();
        let waited = std::sync::atomic::AtomicBool::new(false);
        let result = op
            .retry(schedule.delays(0))
            .when(|e: &AuditError| e.class() == ErrorClass::Unavailable)
            .notify(|e: &AuditError, _| {
                self.warn_outage(e, events);
                waited.store(true, Ordering::Relaxed);
                metrics::counter!(audit_core::metrics::WRITE_WAITS).increment(1);
            })
            .await;
        if waited.load(Ordering::Relaxed) && result.is_ok() {
            tracing::info!(
                waited_s = format!("{:.1}", started.elapsed().as_secs_f64()),
                "database available again; batch stored"
            );
        }
        result
    }

    /// Says, at most every 5 s, that writes are waiting for the database — operators (and `audit-db ingest`'s
    /// output) must see a pause, not a silent stall.
    pub(crate) fn warn_outage(&self, e: &AuditError, events: usize) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_outage_warning_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 5_000)
            && self
                .last_outage_warning_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(events, error = %e, "database unavailable; holding the batch and retrying");
        }
    }

    /// Makes sure partitions exist for every month of the batch not seen before (`force`: every month).
    pub(crate) async fn ensure_partitions(&self, events: &[PreparedEvent], force: bool) -> AuditResult<()> {
        let mut wanted: Vec<DateTime<Utc>> = Vec::new();
        {
            let known = self.known_months.lock().expect("known_months lock");
            let mut seen = std::collections::HashSet::new();
            for p in events {
                let k = month_key(p.event.timestamp);
                if (force || !known.contains(&k)) && seen.insert(k) {
                    wanted.push(p.event.timestamp);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        self.partitions.ensure_covering(&wanted).await?;
        let mut known = self.known_months.lock().expect("known_months lock");
        known.extend(wanted.iter().map(|t| month_key(*t)));
        Ok(())
    }

    /// How the write transaction looks for stored keys: optimistic when a unique index refuses duplicates.
    fn duplicate_check(&self) -> DuplicateCheck {
        if self.partitions.event_key_is_unique() { DuplicateCheck::Optimistic } else { DuplicateCheck::Always }
    }

    /// One attempt at the write transaction, under the resilience policy. The repeated operation owns what it
    /// uses (the policy may run it several times, and its future must be `Send` for the writer task).
    async fn store_once(
        self: &Arc<Self>,
        events: &Arc<Vec<PreparedEvent>>,
        earlier: &EarlierIds,
        atomicity: Atomicity,
    ) -> AuditResult<(Vec<WriteOutcome>, Option<CommitLsn>)> {
        let (me, events, earlier) = (self.clone(), events.clone(), earlier.clone());
        let (outcomes, lsn) = self
            .policy
            .execute(move || {
                let (inner, events, earlier) = (me.clone(), events.clone(), earlier.clone());
                async move {
                    let wait = inner.config.database.pool_options().acquire_timeout;
                    let result = async {
                        let mut conn = audit_pg::checkout(&inner.write_pool, wait).await?;
                        let mut earlier = earlier.lock().await;
                        write_isolating(conn.client(), &events, &mut earlier, inner.duplicate_check(), atomicity).await
                    }
                    .await;
                    if let Err(e) = &result
                        && e.class() == ErrorClass::Unavailable
                    {
                        inner.warn_outage(e, events.len());
                    }
                    result
                }
            })
            .await?;
        self.note_commit(lsn);
        Ok((outcomes, lsn))
    }
}
