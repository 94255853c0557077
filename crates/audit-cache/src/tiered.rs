//! The [`TieredCache`] type: construction, counters, clearing, health, and its [`QueryCache`] implementation (which
//! hands each call to its stage: `lookup` for reads, `invalidate` for writes).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use audit_core::{
    AuditResult, CacheStats, CacheTier, ComponentHealth, Direct, HealthState, Page, QueryCache, QueryScope,
    ResiliencePolicy, WriteMark,
};
use tracing::debug;

use crate::clock::Clock;
use crate::config::{CacheConfig, CacheOptions};
use crate::error::CacheError;
use crate::generation::LocalGenerations;
use crate::invalidate::glob_escape;
use crate::l1::L1;
use crate::l2::Backend;
use crate::remote::Remote;

/// The L1 + L2 query cache. Build it once per process from the `[cache]` configuration and share it (it is
/// `Send + Sync`). `P` wraps every Redis call (audit-resilience's circuit breaker in production, which is also what
/// makes a dead Redis cheap); the default adds nothing.
pub struct TieredCache<P: ResiliencePolicy = Direct> {
    pub(crate) enabled: bool,
    pub(crate) ttl_ms: u64,
    pub(crate) staleness_ms: u64,
    pub(crate) prefix: String,
    pub(crate) max_scope_months: u32,
    pub(crate) max_l2_value_bytes: usize,
    pub(crate) l1: L1,
    /// The Redis side; `None` without L2.
    pub(crate) remote: Option<Arc<Remote<P>>>,
    pub(crate) locals: LocalGenerations,
    pub(crate) clock: Clock,
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
}

impl<P: ResiliencePolicy> std::fmt::Debug for TieredCache<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("enabled", &self.enabled)
            .field("prefix", &self.prefix)
            .field("l1", &self.l1)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl TieredCache<Direct> {
    /// Builds the cache from `[cache]` with default options and no resilience policy. Does not connect: a Redis
    /// that is down at start-up only degrades the cache. Fails only on an unusable configuration.
    pub fn new(config: &CacheConfig) -> AuditResult<Self> {
        Self::with_policy(config, CacheOptions::default(), Direct)
    }
}

impl<P: ResiliencePolicy> TieredCache<P> {
    /// Builds the cache with explicit options and a policy that wraps every Redis call. Does not connect.
    pub fn with_policy(config: &CacheConfig, options: CacheOptions, policy: P) -> AuditResult<Self> {
        config.check().map_err(|(key, why)| CacheError::Config(format!("{key}: {why}")))?;
        let budget = config.max_size_mb.saturating_mul(1 << 20).max(1);
        let remote = match (&config.redis_url, config.enabled) {
            (Some(url), true) if !url.trim().is_empty() => {
                let backend =
                    Backend::new(url, config.redis_cluster_mode, options.redis_timeout, options.redis_pool_size)?;
                Some(Arc::new(Remote::new(backend, policy, config, &options)))
            }
            _ => None,
        };
        Ok(Self {
            enabled: config.enabled,
            ttl_ms: config.default_ttl.saturating_mul(1000),
            staleness_ms: config.local_staleness_ms,
            prefix: config.key_prefix.clone(),
            max_scope_months: options.max_scope_months,
            max_l2_value_bytes: options.max_l2_value_bytes,
            l1: L1::new(if config.enabled { budget } else { 1 << 20 }, config.max_keys),
            remote,
            locals: LocalGenerations::new(options.local_generation_slots),
            clock: Clock::start(),
            l1_hits: AtomicU64::new(0),
            l2_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The byte budget L1 enforces (the configured one, rounded down to a multiple of its shard count).
    pub fn l1_budget_bytes(&self) -> u64 {
        self.l1.budget
    }

    /// Whether an L2 (Redis) is configured.
    pub fn has_l2(&self) -> bool {
        self.remote.is_some()
    }

    /// Drops every L1 entry of this process (L2 and other processes are untouched; benchmarks use it to measure
    /// L2). Returns how many entries were held.
    pub fn clear_l1(&self) -> u64 {
        let held = self.l1.cache.len() as u64;
        self.l1.cache.clear();
        self.publish_gauges();
        held
    }

    /// Actively checks Redis (one `PING`, bounded by the Redis timeout, not through the policy) and reports it;
    /// `None` without Redis.
    pub async fn ping(&self) -> Option<ComponentHealth> {
        Some(self.remote.as_ref()?.ping().await)
    }

    /// Counts an answer by the tier that gave it.
    pub(crate) fn hit(&self, tier: CacheTier) {
        let c = match tier {
            CacheTier::L1 => &self.l1_hits,
            CacheTier::L2 => &self.l2_hits,
            CacheTier::Db => &self.misses,
        };
        c.fetch_add(1, Ordering::Relaxed);
        match tier {
            CacheTier::Db => metrics::counter!(audit_core::metrics::CACHE_MISSES).increment(1),
            CacheTier::L1 => metrics::counter!(audit_core::metrics::CACHE_HITS, "tier" => "l1").increment(1),
            CacheTier::L2 => metrics::counter!(audit_core::metrics::CACHE_HITS, "tier" => "l2").increment(1),
        }
    }

    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!(audit_core::metrics::CACHE_BYTES).set(self.l1.cache.weight() as f64);
        metrics::gauge!(audit_core::metrics::CACHE_ENTRIES).set(self.l1.cache.len() as f64);
    }

    /// The `cache` component: degraded while its L2 is configured but failing, since the cache then serves only
    /// answers proven fresh within `localStalenessMs`.
    fn cache_health(&self) -> ComponentHealth {
        let s = self.stats();
        let l2_failing = self.remote.as_ref().is_some_and(|r| r.reachable() == Some(false));
        ComponentHealth {
            name: "cache".into(),
            status: if l2_failing { HealthState::Degraded } else { HealthState::Healthy },
            details: serde_json::json!({
                "enabled": self.enabled,
                "mode": if self.remote.is_some() { "l1+l2" } else { "l1" },
                "entries": s.entries,
                "bytes": s.bytes,
                "budget_bytes": self.l1.budget,
                "hit_ratio": s.hit_ratio,
                "evictions": s.evictions,
                "l2_failing": l2_failing,
            }),
        }
    }
}

impl<P: ResiliencePolicy> QueryCache for TieredCache<P> {
    async fn get_or_load<F, Fut>(&self, scope: &QueryScope, key: &str, load: F) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        self.lookup(scope, key, load).await
    }

    async fn invalidate(&self, writes: &[WriteMark]) {
        self.invalidate_writes(writes).await;
    }

    fn stats(&self) -> CacheStats {
        let (l1_hits, l2_hits, misses) = (
            self.l1_hits.load(Ordering::Relaxed),
            self.l2_hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        );
        let reads = l1_hits + l2_hits + misses;
        CacheStats {
            l1_hits,
            l2_hits,
            misses,
            evictions: self.l1.hook.evictions.load(Ordering::Relaxed),
            bytes: self.l1.cache.weight(),
            entries: self.l1.cache.len() as u64,
            hit_ratio: if reads == 0 { 0.0 } else { (l1_hits + l2_hits) as f64 / reads as f64 },
        }
    }

    /// Drops every entry: L1, and in Redis every key under the key prefix (values and generation tokens, found with
    /// `SCAN`, never `KEYS`; on every primary in cluster mode), under the policy. Removing tokens is safe: readers
    /// recreate them with fresh random values, so no old answer can match again — which also pays every
    /// invalidation still owed to Redis from before the clear. Returns the L1 entries dropped plus the Redis keys
    /// removed; a Redis failure is returned (after L1 was cleared).
    async fn clear(&self) -> AuditResult<u64> {
        let dropped = self.clear_l1();
        let Some(remote) = &self.remote else { return Ok(dropped) };
        let owed_before = remote.pending.lock().unwrap_or_else(|p| p.into_inner()).last_ticket();
        let removed = remote.delete_matching(format!("{}*", glob_escape(&self.prefix))).await?;
        remote.paid_up_to(owed_before);
        debug!(dropped, removed, "cache cleared");
        Ok(dropped + removed)
    }

    fn health(&self) -> Vec<ComponentHealth> {
        let mut out = vec![self.cache_health()];
        if let Some(remote) = &self.remote {
            out.push(remote.health());
            out.extend(remote.policy_health());
        }
        out
    }
}
