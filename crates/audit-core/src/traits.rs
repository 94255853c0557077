//! The traits through which the audit-db crates meet. Each backend crate implements one; `audit-client` is
//! generic over them and never names another crate's concrete type.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::AuditResult;
use crate::filter::Page;

/// Creates missing time partitions, so that no event is ever refused for lack of one.
pub trait PartitionProvisioner: Send + Sync + 'static {
    /// Makes sure a partition exists for the period of every timestamp given (duplicates are fine; the caller
    /// passes one timestamp per distinct period it has not seen before).
    fn ensure_covering(&self, timestamps: &[DateTime<Utc>]) -> impl Future<Output = AuditResult<()>> + Send;

    /// Forgets what the provisioner believes exists, so the next `ensure_covering` reads the catalog again. The
    /// write path calls it when the database says a partition it believed in is gone (another process dropped it).
    fn forget_known(&self) {}

    /// Whether a unique index covers exactly `(event_id, timestamp)` on every partition, so that the write path may
    /// let it refuse a duplicate instead of looking every key up first. `false` (always look up) is always safe.
    fn event_key_is_unique(&self) -> bool {
        false
    }

    /// How often the client should run [`Self::maintain`] in the background (`partition.autoMaintenance`);
    /// `None`: never (maintenance is run by an operator or another process).
    fn maintenance_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// One round of maintenance (premake ahead, retention, analysis), safe to run from many instances at once.
    fn maintain(&self) -> impl Future<Output = AuditResult<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Wraps an operation with failure handling (circuit breaker, bounded retry, deadline) without knowing what the
/// operation does. `op` may be called several times; it must be safe to repeat (ours are, through `event_id`
/// idempotency and read-only queries).
pub trait ResiliencePolicy: Send + Sync + 'static {
    /// Runs `op` under the policy.
    fn execute<T, F, Fut>(&self, op: F) -> impl Future<Output = AuditResult<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = AuditResult<T>> + Send;

    /// The policy's state for the health report (breaker state, failure counts).
    fn health(&self) -> Vec<ComponentHealth> {
        Vec::new()
    }
}

/// The policy that calls the operation once and adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl ResiliencePolicy for Direct {
    fn execute<T, F, Fut>(&self, mut op: F) -> impl Future<Output = AuditResult<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = AuditResult<T>> + Send,
    {
        op()
    }
}

/// Which tier answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheTier {
    /// In-process cache.
    L1,
    /// Shared Redis cache.
    L2,
    /// The database (cache miss or cache off).
    Db,
}

impl CacheTier {
    /// `l1`, `l2` or `db`, as logged (`cache=l1`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::L1 => "l1",
            CacheTier::L2 => "l2",
            CacheTier::Db => "db",
        }
    }
}

/// What part of the data a query reads: the cache uses it to decide which writes make a cached answer stale.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryScope {
    /// The organisation the query is restricted to, or `None` for a query across organisations.
    pub organization_id: Option<String>,
    /// Inclusive lower bound on `timestamp` in microseconds, if any.
    pub from_micros: Option<i64>,
    /// Exclusive upper bound on `timestamp` in microseconds, if any.
    pub to_micros: Option<i64>,
}

/// A committed write, as the cache needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteMark {
    /// The event's organisation.
    pub organization_id: Option<String>,
    /// The event's timestamp in microseconds.
    pub timestamp_micros: i64,
}

/// Counters a cache reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Answers served from L1.
    pub l1_hits: u64,
    /// Answers served from L2.
    pub l2_hits: u64,
    /// Answers that needed the database.
    pub misses: u64,
    /// Entries evicted from L1 for size.
    pub evictions: u64,
    /// Bytes held by L1 (by its weigher).
    pub bytes: u64,
    /// Entries held by L1.
    pub entries: u64,
    /// Hits over reads, 0 when nothing was read.
    pub hit_ratio: f64,
}

/// A query-result cache. Answers must include every event committed before the query began (see
/// `docs/caching.md` for how each implementation keeps that promise).
pub trait QueryCache: Send + Sync + 'static {
    /// Returns the cached page for `key` in `scope`, or calls `load` (at most once for concurrent identical
    /// misses) and caches its answer.
    fn get_or_load<F, Fut>(
        &self,
        scope: &QueryScope,
        key: &str,
        load: F,
    ) -> impl Future<Output = AuditResult<(Arc<Page>, CacheTier)>> + Send
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send;

    /// Called after every commit with what was written, before the writers are told it is durable.
    fn invalidate(&self, writes: &[WriteMark]) -> impl Future<Output = ()> + Send;

    /// Current counters.
    fn stats(&self) -> CacheStats;

    /// Drops every cached answer this cache can reach (the seed's `cache.clear()`); returns how many entries went.
    fn clear(&self) -> impl Future<Output = AuditResult<u64>> + Send;

    /// Health of the cache's dependencies (Redis), for the health report.
    fn health(&self) -> Vec<ComponentHealth> {
        Vec::new()
    }
}

/// The cache that caches nothing: every query goes to the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

impl QueryCache for NoCache {
    async fn get_or_load<F, Fut>(&self, _scope: &QueryScope, _key: &str, load: F) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        Ok((Arc::new(load().await?), CacheTier::Db))
    }

    async fn invalidate(&self, _writes: &[WriteMark]) {}

    fn stats(&self) -> CacheStats {
        CacheStats::default()
    }

    async fn clear(&self) -> AuditResult<u64> {
        Ok(0)
    }
}

/// Health of one component, as the seed's health report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// Component name (`primary`, `redis`, `breaker:primary`, …).
    pub name: String,
    /// Its state.
    pub status: HealthState,
    /// Free-form details (latency, breaker state, counts).
    pub details: serde_json::Value,
}

/// Overall or per-component health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Working normally.
    Healthy,
    /// Working with reduced capability (e.g. cache bypassed).
    Degraded,
    /// Not working.
    Unhealthy,
}
