//! `[cache]`: the query cache's tiers, budget and freshness ([`CacheConfig`], read from the configuration by the
//! server), and the code-only tuning ([`CacheOptions`]).

use std::time::Duration;

use audit_core::RetrySchedule;
use serde::{Deserialize, Serialize};

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache query answers at all.
    pub enabled: bool,
    /// L1 memory budget, MiB.
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: u64,
    /// Entry time to live, seconds.
    #[serde(rename = "defaultTTL")]
    pub default_ttl: u64,
    /// Most L1 entries.
    pub max_keys: u64,
    /// L2 Redis URL (`None` → L1 only).
    pub redis_url: Option<String>,
    /// Talk Redis Cluster protocol.
    pub redis_cluster_mode: bool,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Without Redis: how long L1 may serve an answer that misses another process's writes, ms.
    pub local_staleness_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size_mb: 100,
            default_ttl: 300,
            max_keys: 10_000,
            redis_url: None,
            redis_cluster_mode: false,
            key_prefix: "audit-db:".into(),
            local_staleness_ms: 1_000,
        }
    }
}

impl CacheConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_size_mb == 0 && self.enabled {
            return Err(("cache.maxSizeMB", "must be at least 1 when the cache is enabled".into()));
        }
        Ok(())
    }
}

/// Tuning that [`CacheConfig`] does not carry (code only, not in the configuration file); the defaults suit
/// production.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Bound on every Redis call, connection checkout included: a slow Redis costs a query at most this much per
    /// call. Failing fast on a dead Redis is the job of the `ResiliencePolicy` the cache is built with (a circuit
    /// breaker in production); without one every call may cost up to this bound.
    pub redis_timeout: Duration,
    /// When to re-send generation bumps that could not reach Redis. Its attempts should be effectively unbounded
    /// (the default is `u32::MAX` attempts): an undelivered bump is a freshness debt towards other processes.
    pub invalidation_retry: RetrySchedule,
    /// Most generation keys held for re-sending. Beyond it the cache forgets the individual keys and, once Redis
    /// answers, replaces every generation token under the key prefix instead (safe, and bounded in memory; it only
    /// costs other processes their cached answers).
    pub max_pending_invalidations: usize,
    /// A scope spanning more calendar months than this depends on its organisation's generation instead of one
    /// generation per month (bounds the keys read per query).
    pub max_scope_months: u32,
    /// Answers whose encoding is larger than this are not written to L2.
    pub max_l2_value_bytes: usize,
    /// Connections in the Redis pool (single-server mode).
    pub redis_pool_size: u32,
    /// Lifetime of a generation token in Redis. Any value is safe (a missing token is recreated with a fresh
    /// random value, which only causes misses); long enough to outlive cached values avoids needless misses.
    pub generation_ttl: Duration,
    /// Number of in-process generation counters (hashed; collisions only cause extra misses).
    pub local_generation_slots: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            redis_timeout: Duration::from_millis(75),
            invalidation_retry: RetrySchedule::new(u32::MAX, Duration::from_millis(250), Duration::from_secs(5)),
            max_pending_invalidations: 10_000,
            max_scope_months: 24,
            max_l2_value_bytes: 8 << 20,
            redis_pool_size: 8,
            generation_ttl: Duration::from_secs(7 * 24 * 3600),
            local_generation_slots: 4096,
        }
    }
}
