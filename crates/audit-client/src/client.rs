//! [`AuditClient`]: the one entry type applications use.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use audit_core::event::truncate_to_micros;
use audit_core::traits::{CacheTier, Direct, NoCache, PartitionProvisioner, QueryCache, QueryScope, ResiliencePolicy};
use audit_core::{
    AuditError, AuditResult, Consistency, EventFilter, NewEvent, PrimaryOnly, ReadRoute, ReadRouter, Routed,
    StoredEvent, ValidationError, Validator,
};
use audit_pg::{Connector, DatabaseConfig, PgPool, PooledConn, build_pool, checkout};
use chrono::Utc;
use uuid::Uuid;

use crate::ack::{Ack, BatchItem, BatchReport, CommitLsn, QueryAnswer, Rejection};
use crate::batcher::GroupCommitter;
use crate::config::IngestConfig;
use crate::observe::{Operation, OperationStats};
use crate::reader;
use crate::writer::{Atomicity, PreparedEvent, WriteOutcome};

/// What the client needs to know: the `[database]` and `[ingest]` sections and the slow-operation threshold of
/// `[monitoring]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientConfig {
    /// Connections, pools and timeouts.
    pub database: DatabaseConfig,
    /// Group commit, queue and validation limits.
    pub ingest: IngestConfig,
    /// Operations slower than this are logged at warn and counted (`SLOW_QUERY_THRESHOLD`, ms).
    pub slow_operation_ms: u64,
}

/// How much of one connection pool is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolUse {
    /// `read` or `write`.
    pub pool: &'static str,
    /// Open connections.
    pub connections: u32,
    /// Open and idle.
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
}

/// Bulk inserts are stored in transactions of at most this many events (one binary COPY each).
const BULK_CHUNK: usize = 10_000;

pub(crate) struct Inner<P, C, R, Q> {
    pub(crate) config: ClientConfig,
    pub(crate) url: String,
    pub(crate) connector: Connector,
    pub(crate) read_pool: PgPool,
    pub(crate) write_pool: PgPool,
    pub(crate) partitions: P,
    pub(crate) cache: C,
    pub(crate) policy: R,
    pub(crate) router: Q,
    pub(crate) validator: Validator,
    pub(crate) known_months: std::sync::Mutex<std::collections::HashSet<i32>>,
    pub(crate) ops: OperationStats,
    pub(crate) started: Instant,
    pub(crate) last_outage_warning_ms: AtomicU64,
    pub(crate) last_commit_lsn: AtomicU64,
    /// The personal-data policy, installed once before the first write ([`AuditClient::set_personal_data`]).
    pub(crate) privacy: std::sync::OnceLock<Arc<dyn audit_core::PersonalData>>,
}

/// The audit-db client: durable group-committed inserts, bulk COPY, cached queries, transactions, health.
///
/// Generic over the partition provisioner, the query cache, the resilience policy and the read router — the traits
/// of audit-core — so this crate never names another audit-db crate's types. `audit-server` wires the concrete
/// ones. The router is the last parameter and defaults to [`PrimaryOnly`], so `AuditClient<P, C, R>` still names
/// the client without replicas.
pub struct AuditClient<P, C = NoCache, R = Direct, Q = PrimaryOnly> {
    pub(crate) inner: Arc<Inner<P, C, R, Q>>,
    pub(crate) committer: GroupCommitter,
}

impl<P, C, R, Q> Clone for AuditClient<P, C, R, Q> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), committer: self.committer.clone() }
    }
}

impl<P, C, R, Q> std::fmt::Debug for AuditClient<P, C, R, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditClient").field("target", &self.inner.connector.target()).finish_non_exhaustive()
    }
}

impl<P, C, R> AuditClient<P, C, R, PrimaryOnly>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
{
    /// Connects to `url` and starts the group-commit writer; every read goes to the primary (see
    /// [`AuditClient::connect_with_router`] for read replicas). The database must answer within
    /// `maxConnectionAttempts` attempts of `connectionTimeout` each (a down database fails fast, naming where we
    /// tried and how often). Migrations are not run here: see `audit_pg::run_migrations`.
    pub async fn connect(config: ClientConfig, url: &str, partitions: P, cache: C, policy: R) -> AuditResult<Self> {
        Self::connect_with_router(config, url, partitions, cache, policy, PrimaryOnly).await
    }
}

pub(crate) fn now_micros() -> chrono::DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

impl<P, C, R, Q> AuditClient<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// Connects to `url` (the primary; a libpq multi-host URL with `target_session_attrs=read-write` follows a
    /// failover) and starts the group-commit writer. Reads other than [`Consistency::Strong`] ones are offered to
    /// `router` first. Otherwise as [`AuditClient::connect`].
    pub async fn connect_with_router(
        config: ClientConfig,
        url: &str,
        partitions: P,
        cache: C,
        policy: R,
        router: Q,
    ) -> AuditResult<Self> {
        let connector = Connector::new(url, config.database.connect_options("primary"))?;
        let pool_options = config.database.pool_options();
        let read_pool = build_pool(connector.clone(), &pool_options)?;
        let write_pool = build_pool(connector.clone(), &pool_options)?;
        connector.await_reachable(config.database.max_connection_attempts).await?;

        let validator = Validator {
            max_future_skew: chrono::Duration::seconds(config.ingest.max_future_skew_secs),
            max_details_bytes: config.ingest.max_details_bytes,
        };
        let ops = OperationStats::new(Duration::from_millis(config.slow_operation_ms));
        let inner = Arc::new(Inner {
            url: url.to_string(),
            connector,
            read_pool,
            write_pool,
            partitions,
            cache,
            policy,
            router,
            validator,
            known_months: Default::default(),
            ops,
            started: Instant::now(),
            last_outage_warning_ms: AtomicU64::new(0),
            last_commit_lsn: AtomicU64::new(0),
            privacy: std::sync::OnceLock::new(),
            config,
        });
        let flush_inner = inner.clone();
        let committer = GroupCommitter::spawn(
            inner.config.ingest.batch_max_events,
            Duration::from_micros(inner.config.ingest.batch_max_wait_us),
            inner.config.ingest.queue_capacity,
            move |events| {
                let inner = flush_inner.clone();
                async move { inner.store(events, Atomicity::PerEvent).await }
            },
        );
        if let Some(every) = inner.partitions.maintenance_interval() {
            spawn_maintenance(Arc::downgrade(&inner), every);
        }
        Ok(Self { inner, committer })
    }

    /// Installs the personal-data policy (crypto-shredding): from now on personal values are sealed before their
    /// leaf hash is computed, reads open them (or show `[erased]`), and filters on personal fields are translated to
    /// equality tokens. Install it right after connecting, before the first write; a second call is refused.
    pub fn set_personal_data(&self, policy: Arc<dyn audit_core::PersonalData>) -> AuditResult<()> {
        self.inner
            .privacy
            .set(policy)
            .map_err(|_| AuditError::invalid("a personal-data policy is already installed on this client"))
    }

    /// The personal-data policy installed, if any.
    pub fn personal_data(&self) -> Option<&Arc<dyn audit_core::PersonalData>> {
        self.inner.privacy.get()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The database URL in use.
    pub fn database_url(&self) -> &str {
        &self.inner.url
    }

    /// `PostgreSQL at host:port` of the primary, for messages.
    pub fn database_target(&self) -> &str {
        self.inner.connector.target()
    }

    /// The validation rules in force (for callers that pre-validate, such as the NDJSON ingester).
    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// The query cache (the seed's `auditDb.cache`): `stats()`, `clear()`.
    pub fn cache(&self) -> &C {
        &self.inner.cache
    }

    /// The partition provisioner in use.
    pub fn partitions(&self) -> &P {
        &self.inner.partitions
    }

    /// Connections of each pool now (`read`, `write`), for the pool metrics and the health report.
    pub fn pools(&self) -> Vec<PoolUse> {
        [("read", &self.inner.read_pool), ("write", &self.inner.write_pool)]
            .into_iter()
            .map(|(name, pool)| {
                let state = pool.state();
                PoolUse {
                    pool: name,
                    connections: state.connections,
                    idle: state.idle_connections,
                    max: self.inner.config.database.pool_size,
                }
            })
            .collect()
    }

    /// Events waiting for the group-commit writer, and the queue's capacity.
    pub fn insert_queue(&self) -> (usize, usize) {
        (self.committer.queued(), self.inner.config.ingest.queue_capacity)
    }

    /// WAL position of this client's latest commit (`None` before the first): the token a read on a replica must
    /// have replayed to see this client's writes.
    pub fn last_commit_lsn(&self) -> Option<CommitLsn> {
        self.inner.last_commit()
    }

    /// Stores one event and returns once it is committed. Concurrent calls share transactions (group commit).
    pub async fn insert(&self, event: serde_json::Value) -> AuditResult<Ack> {
        self.inner
            .ops
            .observe(Operation::Insert, async {
                let e = self.inner.validator.validate_value(event, Utc::now()).map_err(|e| {
                    self.inner.ops.count_rejected(1);
                    AuditError::from(e)
                })?;
                self.submit(e).await
            })
            .await
    }

    /// Stores one already validated event (see [`Validator`]); returns once it is committed.
    pub async fn insert_event(&self, event: NewEvent) -> AuditResult<Ack> {
        self.inner.ops.observe(Operation::Insert, self.submit(event)).await
    }

    async fn submit(&self, event: NewEvent) -> AuditResult<Ack> {
        let event_id = event.event_id;
        let event = crate::privacy::protect_one(&self.inner.privacy_policy(), event).await?;
        let (outcome, commit_lsn) = self.committer.submit(PreparedEvent::new(event, now_micros())).await?;
        match outcome {
            WriteOutcome::Stored { id, seq } => Ok(Ack::Stored { event_id, id, seq, commit_lsn }),
            WriteOutcome::Duplicate => Ok(Ack::Duplicate { event_id, commit_lsn }),
            WriteOutcome::Rejected(r) => {
                let e = AuditError::invalid(r.reason);
                Err(match r.sqlstate {
                    Some(code) => AuditError::from_sqlstate(code, e.message()),
                    None => e,
                })
            }
        }
    }

    /// The bulk path: validates every event (a rejected one never blocks the others), then stores the valid ones
    /// with binary COPY in transactions of up to 10,000 events. Returns one item per input, in order.
    pub async fn insert_batch(&self, events: Vec<serde_json::Value>) -> AuditResult<BatchReport> {
        let now = Utc::now();
        let parsed: Vec<Result<NewEvent, ValidationError>> =
            events.into_iter().map(|v| self.inner.validator.validate_value(v, now)).collect();
        self.insert_validated(parsed).await
    }

    /// Like [`Self::insert_batch`] for events validated by the caller (rejections passed through in place).
    pub async fn insert_validated(&self, events: Vec<Result<NewEvent, ValidationError>>) -> AuditResult<BatchReport> {
        self.inner.ops.observe(Operation::InsertBatch, self.store_validated(events)).await
    }

    async fn store_validated(&self, events: Vec<Result<NewEvent, ValidationError>>) -> AuditResult<BatchReport> {
        let mut items: Vec<Option<BatchItem>> = Vec::with_capacity(events.len());
        let mut valid: Vec<(usize, NewEvent)> = Vec::new();
        for (i, r) in events.into_iter().enumerate() {
            match r {
                Ok(e) => {
                    items.push(None);
                    valid.push((i, e));
                }
                Err(e) => {
                    self.inner.ops.count_rejected(1);
                    items.push(Some(BatchItem::Rejected(Rejection { reason: e.to_string(), sqlstate: None })));
                }
            }
        }
        // Sealing personal values (subject keys looked up or created: database work on the privacy pool), then
        // stamping and pre-hashing (CPU) of chunk k+1 overlap storing chunk k. Sealing comes before hashing, so the
        // leaf hash covers what is stored.
        let privacy = self.inner.privacy_policy();
        let prepare = |chunk: Vec<(usize, NewEvent)>| {
            let privacy = privacy.clone();
            tokio::spawn(async move {
                let (idx, events): (Vec<usize>, Vec<NewEvent>) = chunk.into_iter().unzip();
                let events = crate::privacy::protect(&privacy, events).await?;
                tokio::task::spawn_blocking(move || {
                    let ingested_at = now_micros();
                    (idx, events.into_iter().map(|e| PreparedEvent::new(e, ingested_at)).collect::<Vec<_>>())
                })
                .await
                .map_err(|e| AuditError::permanent(format!("preparing events failed: {e}")))
            })
        };
        let mut chunks = Vec::new();
        let mut rest = valid.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(BULK_CHUNK).collect::<Vec<_>>());
        }
        let mut chunks = chunks.into_iter();
        let mut next = chunks.next().map(prepare);
        let mut batch_lsn: Option<CommitLsn> = None;
        while let Some(pending) = next.take() {
            let (idx, prepared): (Vec<usize>, Vec<PreparedEvent>) =
                pending.await.map_err(|e| AuditError::permanent(format!("preparing events failed: {e}")))??;
            next = chunks.next().map(prepare);
            let ids: Vec<Uuid> = prepared.iter().map(|p| p.event.event_id).collect();
            let (outcomes, commit_lsn) = self.inner.store(prepared, Atomicity::PerEvent).await?;
            batch_lsn = batch_lsn.max(commit_lsn);
            for ((i, event_id), o) in idx.into_iter().zip(ids).zip(outcomes) {
                items[i] = Some(match o {
                    WriteOutcome::Stored { id, seq } => BatchItem::Ok(Ack::Stored { event_id, id, seq, commit_lsn }),
                    WriteOutcome::Duplicate => BatchItem::Ok(Ack::Duplicate { event_id, commit_lsn }),
                    WriteOutcome::Rejected(r) => BatchItem::Rejected(r),
                });
            }
        }
        Ok(BatchReport {
            items: items.into_iter().map(|i| i.expect("every item decided")).collect(),
            commit_lsn: batch_lsn,
        })
    }

    /// One page of events matching `filter`, newest first, at the default consistency (read-your-writes: this
    /// client's own commits are seen, from a replica that has replayed them or from the primary).
    pub fn query(
        &self,
        filter: &EventFilter,
    ) -> impl Future<Output = AuditResult<QueryAnswer>> + Send + 'static + use<P, C, R, Q> {
        self.query_with(filter, Consistency::default())
    }

    /// One page of events matching `filter`, newest first, as fresh as `consistency` asks. Strong reads and reads
    /// no replica may serve go through the cache to the primary; a replica's answer bypasses the cache (it is only
    /// as fresh as asked, and the cache promises every later reader the primary's freshness).
    pub fn query_with(
        &self,
        filter: &EventFilter,
        consistency: Consistency,
    ) -> impl Future<Output = AuditResult<QueryAnswer>> + Send + 'static + use<P, C, R, Q> {
        // Owned from here on: a future that names no caller lifetime is one rustc can prove `Send` through the
        // cache's generic `get_or_load` (borrowed closures there run into its higher-ranked auto-trait limits).
        let (client, filter) = (self.clone(), filter.clone());
        async move {
            let ops = client.inner.clone();
            ops.ops.observe(Operation::Query, client.query_cached(filter, consistency)).await
        }
    }

    async fn query_cached(self, filter: EventFilter, consistency: Consistency) -> AuditResult<QueryAnswer> {
        filter.effective_limit()?;
        let privacy = self.inner.privacy_policy();
        let filter = crate::privacy::translate(&privacy, filter).await?;
        let filter = Arc::new(filter.normalized());
        let started = Instant::now();
        let op = {
            let filter = filter.clone();
            Arc::new(move |mut conn: PooledConn| {
                let filter = filter.clone();
                async move { reader::query(&mut conn, &filter).await }
            })
        };
        let (page, tier, route) = match self.inner.try_replica(consistency, op.clone()).await? {
            Some((page, route)) => (Arc::new(page), CacheTier::Db, route),
            None => {
                let (from_micros, to_micros) = filter.time.bounds_micros();
                let scope = QueryScope { organization_id: filter.organization_id.clone(), from_micros, to_micros };
                let key = filter.canonical_key();
                let load = self.inner.read_primary(op);
                let (page, tier) = self.inner.cache.get_or_load(&scope, &key, move || load).await?;
                (page, tier, if tier == CacheTier::Db { ReadRoute::Primary } else { ReadRoute::Cache })
            }
        };
        let page = crate::privacy::reveal_page(&privacy, page).await?;
        metrics::counter!(audit_core::metrics::QUERIES, "tier" => tier.as_str()).increment(1);
        tracing::info!(
            cache = %tier.as_str(),
            route = %route,
            rows = page.events.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "query answered"
        );
        Ok(QueryAnswer { page, tier, route })
    }

    /// How many events match `filter` (uncached; paging fields are ignored), at the default consistency.
    pub async fn count(&self, filter: &EventFilter) -> AuditResult<i64> {
        self.count_with(filter, Consistency::default()).await
    }

    /// How many events match `filter`, as fresh as `consistency` asks.
    pub async fn count_with(&self, filter: &EventFilter, consistency: Consistency) -> AuditResult<i64> {
        let filter = crate::privacy::translate(&self.inner.privacy_policy(), filter.clone()).await?;
        let shared = Arc::new(filter.normalized());
        let count = self.inner.read_routed(consistency, move |mut conn| {
            let filter = shared.clone();
            async move { reader::count(&mut conn, &filter).await }
        });
        let (n, route) = self.inner.ops.observe(Operation::Count, count).await?;
        tracing::info!(route = %route, "count answered");
        Ok(n)
    }

    /// The event with this id, if stored, at the default consistency.
    pub async fn get(&self, event_id: Uuid) -> AuditResult<Option<StoredEvent>> {
        self.get_with(event_id, Consistency::default()).await
    }

    /// The event with this id, if stored, as fresh as `consistency` asks.
    pub async fn get_with(&self, event_id: Uuid, consistency: Consistency) -> AuditResult<Option<StoredEvent>> {
        let get =
            self.inner.read_routed(consistency, move |mut conn| async move { reader::get(&mut conn, event_id).await });
        let (found, route) = self.inner.ops.observe(Operation::Get, get).await?;
        tracing::info!(route = %route, found = found.is_some(), "get answered");
        match found {
            Some(e) => Ok(crate::privacy::reveal(&self.inner.privacy_policy(), vec![e]).await?.pop()),
            None => Ok(None),
        }
    }

    /// The read router (replica status for operators: `audit-db replicas status`).
    pub fn router(&self) -> &Q {
        &self.inner.router
    }

    /// Number of write transactions this client has committed (group commit makes it far smaller than the number
    /// of inserts).
    pub fn write_transactions(&self) -> u64 {
        self.inner.ops.write_transactions()
    }
}

impl<P, C, R, Q> Inner<P, C, R, Q> {
    /// The personal-data policy, owned (futures that hold it stay `'static`).
    pub(crate) fn privacy_policy(&self) -> crate::privacy::Privacy {
        self.privacy.get().cloned()
    }
}

impl<P, C, R, Q> Inner<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// Runs a read on a replica when the router may serve it at `consistency`, otherwise on the primary; returns
    /// the value and who answered. Everything it holds is owned, so the future is `Send + 'static`.
    pub(crate) fn read_routed<T, F, Fut>(
        self: &Arc<Self>,
        consistency: Consistency,
        op: F,
    ) -> impl Future<Output = AuditResult<(T, ReadRoute)>> + Send + 'static + use<P, C, R, Q, T, F, Fut>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let inner = self.clone();
        let op = Arc::new(op);
        async move {
            if let Some(answer) = inner.try_replica(consistency, op.clone()).await? {
                return Ok(answer);
            }
            Ok((inner.read_primary(op).await?, ReadRoute::Primary))
        }
    }

    /// Offers a read to the router unless it must see the primary (`Strong`) or no replica is configured;
    /// `Ok(None)`: run it on the primary. `ReadYourWrites(None)` becomes this client's own last commit; a position
    /// given explicitly is taken as it is (a service answering many users passes each user's own position).
    pub(crate) async fn try_replica<T, F, Fut>(
        &self,
        consistency: Consistency,
        op: Arc<F>,
    ) -> AuditResult<Option<(T, ReadRoute)>>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        if consistency == Consistency::Strong || !self.router.has_replicas() {
            return Ok(None);
        }
        let consistency = match consistency {
            Consistency::ReadYourWrites(None) => Consistency::ReadYourWrites(self.last_commit()),
            other => other,
        };
        match self.router.read(consistency, move |conn| op(conn)).await? {
            Routed::Replica { id, value } => Ok(Some((value, ReadRoute::Replica(id)))),
            Routed::Primary => Ok(None),
        }
    }

    /// Runs a read on a pooled connection to the primary under the resilience policy (each attempt checks a
    /// connection out). Everything it holds is owned, so the future is `Send + 'static` whatever the caller borrows.
    pub(crate) fn read_primary<T, F, Fut>(
        self: &Arc<Self>,
        op: Arc<F>,
    ) -> impl Future<Output = AuditResult<T>> + Send + 'static + use<P, C, R, Q, T, F, Fut>
    where
        T: Send + 'static,
        F: Fn(PooledConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AuditResult<T>> + Send + 'static,
    {
        let inner = self.clone();
        async move {
            metrics::counter!(audit_core::metrics::REPLICA_ROUTED_QUERIES, "target" => "primary").increment(1);
            let attempt_inner = inner.clone();
            inner
                .policy
                .execute(move || {
                    let (inner, op) = (attempt_inner.clone(), op.clone());
                    async move {
                        let wait = inner.config.database.pool_options().acquire_timeout;
                        let conn = checkout(&inner.read_pool, wait).await?;
                        op(conn).await
                    }
                })
                .await
        }
    }

    /// This client's newest commit position, if it committed anything.
    pub(crate) fn last_commit(&self) -> Option<CommitLsn> {
        Some(self.last_commit_lsn.load(Ordering::Acquire)).filter(|v| *v > 0).map(CommitLsn)
    }

    /// Remembers the newest commit position (positions only grow).
    pub(crate) fn note_commit(&self, lsn: Option<CommitLsn>) {
        if let Some(l) = lsn {
            self.last_commit_lsn.fetch_max(l.0, Ordering::AcqRel);
        }
    }
}

/// Runs partition maintenance every `every` for as long as the client lives (`partition.autoMaintenance`), so a
/// library user gets what `serve` gets. A failed round is logged and tried again next time.
fn spawn_maintenance<P, C, R, Q>(inner: std::sync::Weak<Inner<P, C, R, Q>>, every: Duration)
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    tracing::info!(every_s = every.as_secs(), "partition maintenance runs in the background");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = inner.partitions.maintain().await {
                tracing::warn!(error = %e, "partition maintenance round failed; trying again next time");
            }
        }
    });
}

/// Row ids an earlier attempt of the same batch assigned (see `writer::write_in_transaction`).
pub(crate) type EarlierIds = Arc<tokio::sync::Mutex<HashMap<(Uuid, i64), i64>>>;

/// A boxed future, for callbacks that borrow a transaction (`AuditClient::transaction`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
