//! Transactions, in the two forms callers need.
//!
//! - [`AuditClient::transaction`] (the seed's `transaction(async (tx) => …)`): a callback gets a
//!   [`TransactionScope`] that inserts *and* reads inside one database transaction (reads see its own inserts);
//!   everything commits when the callback returns `Ok`, nothing when it returns `Err`.
//! - [`AuditClient::begin`]: a [`Transaction`] that collects validated events and commits them together. Its commit
//!   is repeatable, so the resilience policy may retry it after a lost COMMIT and it is stored exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use audit_core::traits::{PartitionProvisioner, QueryCache, ResiliencePolicy};
use audit_core::{
    AuditError, AuditResult, ErrorClass, EventFilter, NewEvent, Page, PrimaryOnly, ReadRouter, StoredEvent,
};
use audit_pg::{PooledConn, checkout, pg_error};
use chrono::Utc;
use uuid::Uuid;

use crate::ack::{Ack, CommitLsn};
use crate::client::{AuditClient, BoxFuture, Inner, now_micros};
use crate::observe::Operation;
use crate::reader;
use crate::writer::{Atomicity, DuplicateCheck, PreparedEvent, WriteOutcome, current_wal_lsn, write_in_transaction};

impl<P, C, R, Q> AuditClient<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// Runs `work` inside one database transaction: its inserts are visible to its own reads, and they commit
    /// together when `work` returns `Ok` (then the value is returned), or not at all when it returns `Err` (then
    /// the error is). The integrity log heads of the organisations it writes stay locked until the end, so keep
    /// the work short.
    ///
    /// ```text
    /// let n = client.transaction(|tx| Box::pin(async move {
    ///     tx.insert(event_a).await?;
    ///     tx.insert(event_b).await?;
    ///     Ok(tx.query(&filter).await?.events.len())
    /// })).await?;
    /// ```
    ///
    /// If the connection is lost while committing, the outcome is read back: the call succeeds when the rows are
    /// stored and fails (Unavailable) when they are not; it is never both or neither.
    pub async fn transaction<T, F>(&self, work: F) -> AuditResult<T>
    where
        T: Send,
        F: for<'t> FnOnce(&'t mut TransactionScope) -> BoxFuture<'t, AuditResult<T>> + Send,
    {
        self.inner.ops.observe(Operation::Transaction, self.run_scope(work)).await
    }

    async fn run_scope<T, F>(&self, work: F) -> AuditResult<T>
    where
        T: Send,
        F: for<'t> FnOnce(&'t mut TransactionScope) -> BoxFuture<'t, AuditResult<T>> + Send,
    {
        let wait = self.inner.config.database.pool_options().acquire_timeout;
        let mut conn = checkout(&self.inner.write_pool, wait).await?;
        conn.batch_execute("BEGIN").await.map_err(|e| pg_error(e, "starting a transaction"))?;
        conn.set_in_caller_transaction(true);
        let mut scope = TransactionScope {
            conn,
            client: Box::new(ScopeClient { inner: self.inner.clone() }),
            written: Vec::new(),
            earlier: HashMap::new(),
        };
        let result = work(&mut scope).await;
        match result {
            Ok(value) => {
                let lsn = scope.commit().await?;
                self.inner.note_commit(Some(lsn));
                let (events, outcomes): (Vec<_>, Vec<_>) = scope.written.into_iter().unzip();
                self.inner.after_commit(&events, &outcomes).await;
                Ok(value)
            }
            Err(e) => {
                scope.rollback().await;
                Err(e)
            }
        }
    }

    /// Starts a collecting transaction: events added to it are committed together, or not at all.
    pub fn begin(&self) -> Transaction<'_, P, C, R, Q> {
        Transaction { client: self, events: Vec::new() }
    }
}

/// What a [`TransactionScope`] needs from its client, without the client's generic parameters (so the callback's
/// type does not depend on them).
trait ScopeHost: Send + Sync {
    fn validate(&self, event: serde_json::Value) -> AuditResult<NewEvent>;
    fn ensure_partitions<'a>(&'a self, events: &'a [PreparedEvent]) -> BoxFuture<'a, AuditResult<()>>;
    fn read_pool_check(&self) -> (audit_pg::PgPool, std::time::Duration);
    fn privacy(&self) -> crate::privacy::Privacy;
}

struct ScopeClient<P, C, R, Q> {
    inner: Arc<Inner<P, C, R, Q>>,
}

impl<P, C, R, Q> ScopeHost for ScopeClient<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    fn validate(&self, event: serde_json::Value) -> AuditResult<NewEvent> {
        self.inner.validator.validate_value(event, Utc::now()).map_err(|e| {
            self.inner.ops.count_rejected(1);
            AuditError::from(e)
        })
    }

    fn ensure_partitions<'a>(&'a self, events: &'a [PreparedEvent]) -> BoxFuture<'a, AuditResult<()>> {
        Box::pin(self.inner.ensure_partitions(events, false))
    }

    fn read_pool_check(&self) -> (audit_pg::PgPool, std::time::Duration) {
        (self.inner.read_pool.clone(), self.inner.config.database.pool_options().acquire_timeout)
    }

    fn privacy(&self) -> crate::privacy::Privacy {
        self.inner.privacy_policy()
    }
}

/// The handle a [`AuditClient::transaction`] callback works with: one connection with an open transaction.
pub struct TransactionScope {
    conn: PooledConn,
    client: Box<dyn ScopeHost>,
    written: Vec<(PreparedEvent, WriteOutcome)>,
    /// `(event_id, timestamp µs) → row id` of what this transaction wrote, to read the outcome back after a lost
    /// COMMIT.
    earlier: HashMap<(Uuid, i64), i64>,
}

impl std::fmt::Debug for TransactionScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionScope").field("written", &self.written.len()).finish_non_exhaustive()
    }
}

impl TransactionScope {
    /// Validates and stores an event inside the transaction (visible to this transaction's reads at once, to
    /// everyone else after the commit). A validation error leaves the transaction usable; a database error aborts it.
    pub async fn insert(&mut self, event: serde_json::Value) -> AuditResult<Ack> {
        let e = self.client.validate(event)?;
        self.insert_event(e).await
    }

    /// Stores an already validated event inside the transaction.
    pub async fn insert_event(&mut self, event: NewEvent) -> AuditResult<Ack> {
        let event_id = event.event_id;
        let event = crate::privacy::protect_one(&self.client.privacy(), event).await?;
        let prepared = vec![PreparedEvent::new(event, now_micros())];
        self.client.ensure_partitions(&prepared).await?;
        // Look every key up: a unique violation would abort the caller's whole transaction.
        let outcome = write_in_transaction(self.conn.client(), &prepared, &mut self.earlier, DuplicateCheck::Always)
            .await?
            .pop()
            .expect("one outcome per event");
        let ack = match &outcome {
            WriteOutcome::Stored { id, seq } => Ack::Stored { event_id, id: *id, seq: *seq, commit_lsn: None },
            WriteOutcome::Duplicate => Ack::Duplicate { event_id, commit_lsn: None },
            WriteOutcome::Rejected(r) => return Err(AuditError::invalid(r.reason.clone())),
        };
        self.written.extend(prepared.into_iter().map(|p| (p, outcome.clone())));
        Ok(ack)
    }

    /// One page of events matching `filter`, as this transaction sees them (its own inserts included; uncached).
    pub async fn query(&mut self, filter: &EventFilter) -> AuditResult<Page> {
        let privacy = self.client.privacy();
        let filter = crate::privacy::translate(&privacy, filter.clone()).await?;
        let page = reader::query(&mut self.conn, &filter.normalized()).await?;
        let events = crate::privacy::reveal(&privacy, page.events).await?;
        Ok(Page { events, next_cursor: page.next_cursor })
    }

    /// How many events match `filter`, as this transaction sees them.
    pub async fn count(&mut self, filter: &EventFilter) -> AuditResult<i64> {
        let filter = crate::privacy::translate(&self.client.privacy(), filter.clone()).await?;
        reader::count(&mut self.conn, &filter.normalized()).await
    }

    /// The event with this id, as this transaction sees it.
    pub async fn get(&mut self, event_id: Uuid) -> AuditResult<Option<StoredEvent>> {
        match reader::get(&mut self.conn, event_id).await? {
            Some(e) => Ok(crate::privacy::reveal(&self.client.privacy(), vec![e]).await?.pop()),
            None => Ok(None),
        }
    }

    /// COMMIT, and the commit's WAL position. A COMMIT whose answer is lost is resolved by reading the rows back
    /// on another connection.
    async fn commit(&mut self) -> AuditResult<CommitLsn> {
        match self.conn.batch_execute("COMMIT").await {
            Ok(()) => {
                self.conn.set_in_caller_transaction(false);
                current_wal_lsn(self.conn.client()).await
            }
            Err(e) => {
                let e = pg_error(e, "committing the transaction");
                if e.class() != ErrorClass::Unavailable || self.earlier.is_empty() {
                    return Err(e);
                }
                self.resolve_lost_commit(e).await
            }
        }
    }

    /// After a COMMIT without an answer: all of this transaction's rows are stored (it committed) or none is.
    async fn resolve_lost_commit(&self, lost: AuditError) -> AuditResult<CommitLsn> {
        let (pool, wait) = self.client.read_pool_check();
        let conn =
            checkout(&pool, wait).await.map_err(|e| e.context("reading back a transaction whose COMMIT was lost"))?;
        let ids: Vec<i64> = self.earlier.values().copied().collect();
        let ts: Vec<chrono::DateTime<Utc>> = self
            .earlier
            .keys()
            .map(|(_, micros)| chrono::DateTime::from_timestamp_micros(*micros).expect("stored micros are in range"))
            .collect();
        let found: i64 = conn
            .query_one(
                "SELECT count(*) FROM audit_log a JOIN unnest($1::bigint[], $2::timestamptz[]) AS k(id, ts) \
                 ON a.id = k.id AND a.\"timestamp\" = k.ts",
                &[&ids, &ts],
            )
            .await
            .map_err(|e| pg_error(e, "reading back a transaction whose COMMIT was lost"))?
            .get(0);
        if found == ids.len() as i64 {
            current_wal_lsn(&conn).await
        } else {
            Err(lost.context("the transaction was not committed (its rows are absent)"))
        }
    }

    async fn rollback(&mut self) {
        if self.conn.batch_execute("ROLLBACK").await.is_ok() {
            self.conn.set_in_caller_transaction(false);
        }
    }
}

/// Events collected to be committed together. Dropping it without `commit` stores nothing.
pub struct Transaction<'c, P, C, R, Q = PrimaryOnly> {
    client: &'c AuditClient<P, C, R, Q>,
    events: Vec<NewEvent>,
}

impl<P, C, R, Q> std::fmt::Debug for Transaction<'_, P, C, R, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("events", &self.events.len()).finish()
    }
}

impl<P, C, R, Q> Transaction<'_, P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// Validates and adds an event; returns its `event_id`. A validation error leaves the transaction usable.
    pub fn insert(&mut self, event: serde_json::Value) -> AuditResult<Uuid> {
        let e = self.client.inner.validator.validate_value(event, Utc::now())?;
        let id = e.event_id;
        self.events.push(e);
        Ok(id)
    }

    /// Commits every added event in one database transaction (under the resilience policy: a retry after a lost
    /// COMMIT finds its own rows and reports them stored, exactly once).
    pub async fn commit(self) -> AuditResult<Vec<Ack>> {
        let inner = &self.client.inner;
        let events = self.events;
        inner
            .ops
            .observe(Operation::Transaction, async move {
                let events = crate::privacy::protect(&inner.privacy_policy(), events).await?;
                let ingested_at = now_micros();
                let prepared: Vec<PreparedEvent> =
                    events.into_iter().map(|e| PreparedEvent::new(e, ingested_at)).collect();
                let ids: Vec<Uuid> = prepared.iter().map(|p| p.event.event_id).collect();
                let (outcomes, commit_lsn) = inner.store(prepared, Atomicity::AllOrNothing).await?;
                Ok(ids
                    .into_iter()
                    .zip(outcomes)
                    .map(|(event_id, o)| match o {
                        WriteOutcome::Stored { id, seq } => Ack::Stored { event_id, id, seq, commit_lsn },
                        _ => Ack::Duplicate { event_id, commit_lsn },
                    })
                    .collect())
            })
            .await
    }
}
