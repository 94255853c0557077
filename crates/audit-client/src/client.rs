//! `AuditClient`: the one entry type applications use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_core::config::AuditConfig;
use audit_core::event::truncate_to_micros;
use audit_core::traits::{
    CacheTier, ComponentHealth, Direct, HealthState, NoCache, PartitionProvisioner, QueryCache, QueryScope,
    ResiliencePolicy, WriteMark,
};
use audit_core::{AuditError, AuditResult, EventFilter, NewEvent, Page, StoredEvent, ValidationError, Validator};
use chrono::{DateTime, Datelike, Utc};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde::Serialize;
use uuid::Uuid;

use crate::batcher::GroupCommitter;
use crate::pg::{PgClientManager, pool_error, read_pool_error};
use crate::reader;
use crate::writer::{Atomicity, DuplicateCheck, PreparedEvent, WriteOutcome, write_isolating};

/// The acknowledgement of one stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Ack {
    /// Durably stored now.
    Stored {
        /// The event's id.
        event_id: Uuid,
        /// Row id.
        id: i64,
        /// Position in its organisation's integrity log.
        seq: i64,
    },
    /// Already stored earlier (same `event_id` and `timestamp`); not stored again.
    Duplicate {
        /// The event's id.
        event_id: Uuid,
    },
}

/// Result of one event of a bulk insert.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItem {
    /// Stored or recognised as a duplicate.
    Ok(Ack),
    /// Refused; the reason names the field.
    Rejected(String),
}

/// Outcome of `insert_batch`, one item per input event, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReport {
    /// Per-event results.
    pub items: Vec<BatchItem>,
}

impl BatchReport {
    /// Events stored now.
    pub fn accepted(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Ok(Ack::Stored { .. }))).count()
    }
    /// Events already stored before.
    pub fn duplicates(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Ok(Ack::Duplicate { .. }))).count()
    }
    /// Events refused.
    pub fn rejected(&self) -> usize {
        self.items.iter().filter(|i| matches!(i, BatchItem::Rejected(_))).count()
    }
}

/// A query's answer and which tier produced it.
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    /// The page (shared with the cache).
    pub page: Arc<Page>,
    /// `l1`, `l2` or `db`.
    pub tier: CacheTier,
}

/// The health report, as the seed's `getHealthStatus()` shaped it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Worst state that matters: the primary decides between healthy and unhealthy; caches only degrade.
    pub overall: HealthState,
    /// Per component.
    pub components: BTreeMap<String, ComponentHealth>,
    /// Counters and rates since start.
    pub metrics: serde_json::Value,
}

/// Counters kept by the client itself (also exported through the `metrics` facade).
#[derive(Debug, Default)]
struct ClientStats {
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    write_transactions: AtomicU64,
    queries: AtomicU64,
    query_errors: AtomicU64,
    query_micros: AtomicU64,
}

/// Row ids an earlier attempt of the same batch assigned (see `writer::write_batch`).
type Earlier = Arc<tokio::sync::Mutex<HashMap<(Uuid, i64), i64>>>;

type ReadPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
type WritePool = bb8::Pool<PgClientManager>;

struct Inner<P, C, R> {
    config: AuditConfig,
    url: String,
    read_pool: ReadPool,
    write_pool: WritePool,
    partitions: P,
    cache: C,
    policy: R,
    validator: Validator,
    known_months: Mutex<HashSet<i32>>,
    stats: ClientStats,
    started: Instant,
    last_outage_warning_ms: AtomicU64,
    acquire_timeout: Duration,
}

/// The audit-db client: durable group-committed inserts, bulk COPY, cached queries, transactions, health.
///
/// Generic over the partition provisioner, the query cache and the resilience policy — the traits of audit-core —
/// so this crate never names another audit-db crate's types. `audit-server` wires the concrete ones.
pub struct AuditClient<P, C = NoCache, R = Direct> {
    inner: Arc<Inner<P, C, R>>,
    committer: GroupCommitter,
}

impl<P, C, R> Clone for AuditClient<P, C, R> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), committer: self.committer.clone() }
    }
}

impl<P, C, R> std::fmt::Debug for AuditClient<P, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditClient").field("url", &redact(&self.inner.url)).finish_non_exhaustive()
    }
}

/// A URL with its password hidden, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn month_key(t: DateTime<Utc>) -> i32 {
    t.year() * 12 + t.month0() as i32
}

fn now_micros() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

impl<P, C, R> AuditClient<P, C, R>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
{
    /// Connects to `url` (checking that the database answers, with `maxConnectionAttempts` attempts) and starts
    /// the group-commit writer. Migrations are not run here: see [`crate::run_migrations`].
    pub async fn connect(config: AuditConfig, url: &str, partitions: P, cache: C, policy: R) -> AuditResult<Self> {
        let connect_timeout = Duration::from_millis(config.database.connection_timeout);
        let statement_timeout = Duration::from_millis(config.database.query_timeout);
        check_reachable(url, &config).await?;

        let mut mc = ManagerConfig::default();
        let timeout_ms = statement_timeout.as_millis();
        mc.custom_setup = Box::new(move |u: &str| {
            let u = u.to_string();
            Box::pin(async move {
                // Bounded: a peer that accepts TCP but never answers must not hold a pool slot forever.
                let setup = async {
                    let mut c = AsyncPgConnection::establish(&u).await?;
                    c.batch_execute(&format!("SET statement_timeout = {timeout_ms}"))
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                    Ok(c)
                };
                tokio::time::timeout(connect_timeout, setup).await.unwrap_or_else(|_| {
                    Err(diesel::ConnectionError::BadConnection(format!(
                        "no answer from the database within {} ms",
                        connect_timeout.as_millis()
                    )))
                })
            })
        });
        // `retry_connection(false)`: a refused connection is reported at once (the resilience policy decides about
        // retrying) instead of bb8 silently retrying until the checkout times out.
        let read_pool = bb8::Pool::builder()
            .max_size(config.database.pool_size)
            .connection_timeout(connect_timeout)
            .retry_connection(false)
            .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, mc))
            .await
            .map_err(|e| AuditError::unavailable(format!("building the read pool: {e}")))?;
        let write_pool = bb8::Pool::builder()
            .max_size(4)
            .connection_timeout(connect_timeout)
            .retry_connection(false)
            .build(PgClientManager::new(url, connect_timeout, Some(statement_timeout)))
            .await
            .map_err(|e| pool_error(bb8::RunError::User(e), connect_timeout))?;

        let validator = Validator {
            max_future_skew: chrono::Duration::seconds(config.ingest.max_future_skew_secs),
            max_details_bytes: config.ingest.max_details_bytes,
        };
        let inner = Arc::new(Inner {
            url: url.to_string(),
            read_pool,
            write_pool,
            partitions,
            cache,
            policy,
            validator,
            known_months: Mutex::new(HashSet::new()),
            stats: ClientStats::default(),
            started: Instant::now(),
            last_outage_warning_ms: AtomicU64::new(0),
            acquire_timeout: connect_timeout,
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
        Ok(Self { inner, committer })
    }

    /// The configuration in force.
    pub fn config(&self) -> &AuditConfig {
        &self.inner.config
    }

    /// The database URL in use.
    pub fn database_url(&self) -> &str {
        &self.inner.url
    }

    /// The validation rules in force (for callers that pre-validate, such as the NDJSON ingester).
    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// Stores one event and returns once it is committed. Concurrent calls share transactions (group commit).
    pub async fn insert(&self, event: serde_json::Value) -> AuditResult<Ack> {
        let e = self.inner.validator.validate_value(event, Utc::now()).map_err(|e| {
            self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            AuditError::from(e)
        })?;
        self.insert_event(e).await
    }

    /// Stores one already validated event (see [`Validator`]); returns once it is committed.
    pub async fn insert_event(&self, event: NewEvent) -> AuditResult<Ack> {
        let event_id = event.event_id;
        let outcome = self.committer.submit(PreparedEvent::new(event, now_micros())).await?;
        match outcome {
            WriteOutcome::Stored { id, seq } => Ok(Ack::Stored { event_id, id, seq }),
            WriteOutcome::Duplicate => Ok(Ack::Duplicate { event_id }),
            WriteOutcome::Rejected(reason) => Err(AuditError::invalid(reason)),
        }
    }

    /// The bulk path: validates every event (a rejected one never blocks the others), then stores the valid ones
    /// with binary COPY in transactions of up to `chunk` events. Returns one item per input, in order.
    pub async fn insert_batch(&self, events: Vec<serde_json::Value>) -> AuditResult<BatchReport> {
        let now = Utc::now();
        let parsed: Vec<Result<NewEvent, ValidationError>> =
            events.into_iter().map(|v| self.inner.validator.validate_value(v, now)).collect();
        self.insert_validated(parsed).await
    }

    /// Like [`Self::insert_batch`] for events validated by the caller (rejections passed through in place).
    pub async fn insert_validated(&self, events: Vec<Result<NewEvent, ValidationError>>) -> AuditResult<BatchReport> {
        const CHUNK: usize = 10_000;
        let mut items: Vec<Option<BatchItem>> = Vec::with_capacity(events.len());
        let mut valid: Vec<(usize, NewEvent)> = Vec::new();
        for (i, r) in events.into_iter().enumerate() {
            match r {
                Ok(e) => {
                    items.push(None);
                    valid.push((i, e));
                }
                Err(e) => {
                    self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    items.push(Some(BatchItem::Rejected(e.to_string())));
                }
            }
        }
        // Stamping and pre-hashing chunk k+1 (CPU) overlaps storing chunk k (database).
        let prepare = |chunk: Vec<(usize, NewEvent)>| {
            tokio::task::spawn_blocking(move || {
                let ingested_at = now_micros();
                chunk.into_iter().map(|(i, e)| (i, PreparedEvent::new(e, ingested_at))).unzip::<_, _, Vec<_>, Vec<_>>()
            })
        };
        let mut chunks = Vec::new();
        let mut rest = valid.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(CHUNK).collect::<Vec<_>>());
        }
        let mut chunks = chunks.into_iter();
        let mut next = chunks.next().map(prepare);
        while let Some(pending) = next.take() {
            let (idx, prepared): (Vec<usize>, Vec<PreparedEvent>) =
                pending.await.map_err(|e| AuditError::permanent(format!("preparing events failed: {e}")))?;
            next = chunks.next().map(prepare);
            let ids: Vec<Uuid> = prepared.iter().map(|p| p.event.event_id).collect();
            let outcomes = self.inner.store(prepared, Atomicity::PerEvent).await?;
            for ((i, event_id), o) in idx.into_iter().zip(ids).zip(outcomes) {
                items[i] = Some(match o {
                    WriteOutcome::Stored { id, seq } => BatchItem::Ok(Ack::Stored { event_id, id, seq }),
                    WriteOutcome::Duplicate => BatchItem::Ok(Ack::Duplicate { event_id }),
                    WriteOutcome::Rejected(r) => BatchItem::Rejected(r),
                });
            }
        }
        Ok(BatchReport { items: items.into_iter().map(|i| i.expect("every item decided")).collect() })
    }

    /// Starts a transaction: events added to it are committed together, or not at all.
    pub fn begin(&self) -> Transaction<'_, P, C, R> {
        Transaction { client: self, events: Vec::new() }
    }

    /// Runs `build` to collect events, then commits them atomically. If `build` fails, nothing is stored.
    pub async fn transaction<T>(
        &self,
        build: impl FnOnce(&mut Transaction<'_, P, C, R>) -> AuditResult<T>,
    ) -> AuditResult<(T, Vec<Ack>)> {
        let mut tx = self.begin();
        let value = build(&mut tx)?;
        let acks = tx.commit().await?;
        Ok((value, acks))
    }

    /// One page of events matching `filter`, newest first, through the cache.
    pub async fn query(&self, filter: &EventFilter) -> AuditResult<QueryAnswer> {
        filter.effective_limit()?;
        let filter = &filter.normalized();
        let started = Instant::now();
        let (from_micros, to_micros) = filter.time.bounds_micros();
        let scope = QueryScope { organization_id: filter.organization_id.clone(), from_micros, to_micros };
        let key = filter.canonical_key();
        let inner = &self.inner;
        let shared = Arc::new(filter.clone());
        let loader = inner.clone();
        let result = inner
            .cache
            .get_or_load(&scope, &key, move || async move {
                let reads = loader.clone();
                loader
                    .policy
                    .execute(move || {
                        let (inner, filter) = (reads.clone(), shared.clone());
                        async move {
                            let mut conn =
                                inner.read_pool.get().await.map_err(|e| read_pool_error(e, inner.acquire_timeout))?;
                            reader::query(&mut conn, &filter).await
                        }
                    })
                    .await
            })
            .await;
        let elapsed = started.elapsed();
        inner.stats.queries.fetch_add(1, Ordering::Relaxed);
        inner.stats.query_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok((page, tier)) => {
                metrics::counter!("audit_db_queries_total", "tier" => tier.as_str()).increment(1);
                metrics::histogram!("audit_db_operation_duration_seconds", "operation" => "query")
                    .record(elapsed.as_secs_f64());
                if elapsed.as_millis() as u64 > inner.config.monitoring.slow_query_threshold {
                    tracing::warn!(elapsed_ms = elapsed.as_millis() as u64, filter = %key, "slow query");
                }
                tracing::info!(
                    cache = %tier.as_str(),
                    rows = page.events.len(),
                    elapsed_us = elapsed.as_micros() as u64,
                    "query answered"
                );
                Ok(QueryAnswer { page, tier })
            }
            Err(e) => {
                inner.stats.query_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// How many events match `filter` (uncached; paging fields are ignored).
    pub async fn count(&self, filter: &EventFilter) -> AuditResult<i64> {
        let shared = Arc::new(filter.normalized());
        let reads = self.inner.clone();
        self.inner
            .policy
            .execute(move || {
                let (inner, filter) = (reads.clone(), shared.clone());
                async move {
                    let mut conn =
                        inner.read_pool.get().await.map_err(|e| read_pool_error(e, inner.acquire_timeout))?;
                    reader::count(&mut conn, &filter).await
                }
            })
            .await
    }

    /// The event with this id, if stored.
    pub async fn get(&self, event_id: Uuid) -> AuditResult<Option<StoredEvent>> {
        let reads = self.inner.clone();
        self.inner
            .policy
            .execute(move || {
                let inner = reads.clone();
                async move {
                    let mut conn =
                        inner.read_pool.get().await.map_err(|e| read_pool_error(e, inner.acquire_timeout))?;
                    reader::get(&mut conn, event_id).await
                }
            })
            .await
    }

    /// Number of write transactions this client has committed (group commit makes it far smaller than the number
    /// of inserts).
    pub fn write_transactions(&self) -> u64 {
        self.inner.stats.write_transactions.load(Ordering::Relaxed)
    }

    /// The health report: primary reachability and latency, writer queue, cache, breakers, counters.
    pub async fn health(&self) -> HealthReport {
        let inner = &self.inner;
        let mut components = BTreeMap::new();
        let started = Instant::now();
        let ping = async {
            let mut conn = inner.read_pool.get().await.map_err(|e| read_pool_error(e, inner.acquire_timeout))?;
            conn.batch_execute("SELECT 1").await.map_err(|e| crate::pg::diesel_error(e, "health check"))
        };
        let primary = match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(())) => ComponentHealth {
                name: "primary".into(),
                status: HealthState::Healthy,
                details: serde_json::json!({
                    "latency_ms": started.elapsed().as_secs_f64() * 1e3,
                    "target": crate::pg::describe_url(&inner.url),
                }),
            },
            Ok(Err(e)) => ComponentHealth {
                name: "primary".into(),
                status: HealthState::Unhealthy,
                details: serde_json::json!({"error": e.message, "target": crate::pg::describe_url(&inner.url)}),
            },
            Err(_) => ComponentHealth {
                name: "primary".into(),
                status: HealthState::Unhealthy,
                details: serde_json::json!({"error": "no answer within 5 s", "target": crate::pg::describe_url(&inner.url)}),
            },
        };
        components.insert("primary".to_string(), primary);
        let queued = self.committer.queued();
        let cap = inner.config.ingest.queue_capacity;
        components.insert(
            "writer".to_string(),
            ComponentHealth {
                name: "writer".into(),
                status: if queued * 10 >= cap * 9 { HealthState::Degraded } else { HealthState::Healthy },
                details: serde_json::json!({
                    "queued": queued,
                    "capacity": cap,
                    "flushes": self.committer.stats().flushes.load(Ordering::Relaxed),
                }),
            },
        );
        let cs = inner.cache.stats();
        components.insert(
            "cache".to_string(),
            ComponentHealth {
                name: "cache".into(),
                status: HealthState::Healthy,
                details: serde_json::to_value(&cs).unwrap_or_default(),
            },
        );
        for c in inner.cache.health().into_iter().chain(inner.policy.health()) {
            components.insert(c.name.clone(), c);
        }
        let overall = components
            .values()
            .map(|c| match (c.name.as_str(), c.status) {
                ("primary", s) => s,
                (_, HealthState::Unhealthy) => HealthState::Degraded,
                (_, s) => s,
            })
            .max()
            .unwrap_or(HealthState::Healthy);
        let s = &inner.stats;
        let queries = s.queries.load(Ordering::Relaxed);
        let errors = s.query_errors.load(Ordering::Relaxed);
        let metrics = serde_json::json!({
            "events_stored": s.stored.load(Ordering::Relaxed),
            "events_duplicate": s.duplicates.load(Ordering::Relaxed),
            "events_rejected": s.rejected.load(Ordering::Relaxed),
            "write_transactions": s.write_transactions.load(Ordering::Relaxed),
            "queries": queries,
            "query_errors": errors,
            "successRate": if queries == 0 { 1.0 } else { (queries - errors) as f64 / queries as f64 },
            "averageResponseTime": if queries == 0 { 0.0 } else {
                s.query_micros.load(Ordering::Relaxed) as f64 / queries as f64 / 1e3
            },
            "cacheHitRatio": cs.hit_ratio,
        });
        HealthReport { overall, components, metrics }
    }
}

impl<P, C, R> Inner<P, C, R>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
{
    /// With the range strategy the primary key is exactly `(event_id, timestamp)`, so a duplicate cannot slip past
    /// it and the per-event lookup can be skipped until the key refuses one.
    fn duplicate_check(&self) -> DuplicateCheck {
        match self.config.partition.strategy {
            audit_core::config::PartitionStrategy::Range => DuplicateCheck::Optimistic,
            _ => DuplicateCheck::Always,
        }
    }

    /// Runs `op` again while the database is unavailable, up to `ingest.outagePatienceMs`, saying so (see
    /// [`Self::warn_outage`]) and saying when it is back. Writes wait here instead of failing their callers; the
    /// events stay in memory (bounded by the insert queue). Only safe for operations that may be repeated.
    async fn patiently<T, F, Fut>(&self, atomicity: Atomicity, events: usize, mut op: F) -> AuditResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = AuditResult<T>>,
    {
        // A transaction is its caller's unit of work: an outage is reported to the caller at once (only the
        // resilience policy retries it), as the caller may hold other state that depends on the outcome.
        let patience = match atomicity {
            Atomicity::PerEvent => Duration::from_millis(self.config.ingest.outage_patience_ms),
            Atomicity::AllOrNothing => Duration::ZERO,
        };
        let started = Instant::now();
        let mut waited = false;
        let mut pause = Duration::from_millis(100);
        loop {
            match op().await {
                Err(e) if e.class == audit_core::ErrorClass::Unavailable && started.elapsed() < patience => {
                    self.warn_outage(&e, events);
                    waited = true;
                    metrics::counter!("audit_db_write_waits_total").increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => {
                    if waited && other.is_ok() {
                        tracing::info!(
                            waited_s = format!("{:.1}", started.elapsed().as_secs_f64()),
                            "database available again; batch stored"
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// Says, at most every 5 s, that writes are waiting for the database — operators (and `audit-db ingest`'s
    /// output) must see a pause, not a silent stall.
    fn warn_outage(&self, e: &AuditError, events: usize) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_outage_warning_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 5_000)
            && self
                .last_outage_warning_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(events, "database unavailable; holding the batch and retrying: {}", e.message);
        }
    }

    /// Makes sure partitions exist for every month of the batch not seen before.
    async fn ensure_partitions(&self, events: &[PreparedEvent], force: bool) -> AuditResult<()> {
        let mut wanted: Vec<DateTime<Utc>> = Vec::new();
        {
            let known = self.known_months.lock().expect("known_months lock");
            let mut seen = HashSet::new();
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

    /// Stores a batch: partitions, one transaction under the resilience policy, cache invalidation, counters.
    async fn store(
        self: &Arc<Self>,
        events: Vec<PreparedEvent>,
        atomicity: Atomicity,
    ) -> AuditResult<Vec<WriteOutcome>> {
        let n = events.len();
        self.patiently(atomicity, n, || self.ensure_partitions(&events, false)).await?;
        let events = Arc::new(events);
        let earlier = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
        let mut attempt = self.patiently(atomicity, n, || self.store_once(&events, &earlier, atomicity)).await;
        if let Err(e) = &attempt
            && e.sqlstate.as_deref() == Some("23514")
            && e.message.contains("no partition")
        {
            // A partition we believed in is gone (dropped by retention or by hand): re-check all and retry.
            self.partitions.forget_known();
            self.ensure_partitions(&events, true).await?;
            attempt = self.patiently(atomicity, n, || self.store_once(&events, &earlier, atomicity)).await;
        }
        let outcomes = attempt?;
        self.stats.write_transactions.fetch_add(1, Ordering::Relaxed);
        let mut marks = Vec::new();
        let (mut stored, mut dups, mut rejected) = (0u64, 0u64, 0u64);
        for (p, o) in events.iter().zip(&outcomes) {
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
        self.stats.stored.fetch_add(stored, Ordering::Relaxed);
        self.stats.duplicates.fetch_add(dups, Ordering::Relaxed);
        self.stats.rejected.fetch_add(rejected, Ordering::Relaxed);
        metrics::counter!("audit_db_events_total", "result" => "stored").increment(stored);
        metrics::counter!("audit_db_events_total", "result" => "duplicate").increment(dups);
        metrics::counter!("audit_db_events_total", "result" => "rejected").increment(rejected);
        metrics::counter!("audit_db_write_transactions_total").increment(1);
        Ok(outcomes)
    }

    async fn store_once(
        self: &Arc<Self>,
        events: &Arc<Vec<PreparedEvent>>,
        earlier: &Earlier,
        atomicity: Atomicity,
    ) -> AuditResult<Vec<WriteOutcome>> {
        let (me, events, earlier) = (self.clone(), events.clone(), earlier.clone());
        self.policy
            .execute(move || {
                let (inner, events, earlier) = (me.clone(), events.clone(), earlier.clone());
                async move {
                    let result = async {
                        let mut conn =
                            inner.write_pool.get().await.map_err(|e| pool_error(e, inner.acquire_timeout))?;
                        let mut earlier = earlier.lock().await;
                        write_isolating(&mut conn, &events, &mut earlier, inner.duplicate_check(), atomicity).await
                    }
                    .await;
                    if let Err(e) = &result
                        && e.class == audit_core::ErrorClass::Unavailable
                    {
                        inner.warn_outage(e, events.len());
                    }
                    result
                }
            })
            .await
    }
}

/// Events collected to be committed together. Dropping it without `commit` stores nothing.
pub struct Transaction<'c, P, C, R> {
    client: &'c AuditClient<P, C, R>,
    events: Vec<NewEvent>,
}

impl<P, C, R> std::fmt::Debug for Transaction<'_, P, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("events", &self.events.len()).finish()
    }
}

impl<P, C, R> Transaction<'_, P, C, R>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
{
    /// Validates and adds an event; returns its `event_id`. A validation error leaves the transaction usable.
    pub fn insert(&mut self, event: serde_json::Value) -> AuditResult<Uuid> {
        let e = self.client.inner.validator.validate_value(event, Utc::now())?;
        let id = e.event_id;
        self.events.push(e);
        Ok(id)
    }

    /// Commits every added event in one database transaction.
    pub async fn commit(self) -> AuditResult<Vec<Ack>> {
        let inner = &self.client.inner;
        let ingested_at = now_micros();
        let prepared: Vec<PreparedEvent> =
            self.events.into_iter().map(|e| PreparedEvent::new(e, ingested_at)).collect();
        let ids: Vec<Uuid> = prepared.iter().map(|p| p.event.event_id).collect();
        let outcomes = inner.store(prepared, Atomicity::AllOrNothing).await?;
        Ok(ids
            .into_iter()
            .zip(outcomes)
            .map(|(event_id, o)| match o {
                WriteOutcome::Stored { id, seq } => Ack::Stored { event_id, id, seq },
                _ => Ack::Duplicate { event_id },
            })
            .collect())
    }
}

/// Checks that the database answers, with bounded attempts, so that a down database fails fast with a message that
/// names where we tried and how often.
pub async fn check_reachable(url: &str, config: &AuditConfig) -> AuditResult<()> {
    let attempts = config.database.max_connection_attempts.max(1);
    let timeout = Duration::from_millis(config.database.connection_timeout);
    let mut last = None;
    for attempt in 1..=attempts {
        match crate::pg::connect(url, timeout, None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.class.is_retryable() => {
                last = Some(e);
                if attempt < attempts {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
            Err(e) => return Err(e),
        }
    }
    let e = last.expect("at least one attempt");
    Err(AuditError {
        message: format!(
            "cannot reach {} after {attempts} attempt{}: {}",
            crate::pg::describe_url(url),
            if attempts == 1 { "" } else { "s" },
            e.message
        ),
        ..e
    })
}
