//! audit-cache: the two-tier query cache of audit-db.
//!
//! * **L1** — in-process, on `quick_cache`, bounded by bytes (`maxSizeMB`) and entries (`maxKeys`), per-entry TTL,
//!   single-flight loading.
//! * **L2** — Redis (a server through bb8-redis, or a Redis Cluster), compact binary values with `PX` TTLs.
//! * **Freshness** — generation tokens per (organisation, month), per organisation and global live in Redis; a
//!   query reads the tokens of its scope *before* it runs and an answer is served only under identical tokens,
//!   while every commit replaces the tokens of what it wrote *before* the writers are acknowledged. Without Redis,
//!   in-process counters give read-your-writes in the process and answers older than `localStalenessMs` are not
//!   served. The model and its proof sketch are in `docs/caching.md`.
//!
//! [`TieredCache`] implements [`audit_core::QueryCache`]; it never returns a Redis error to the caller.

mod codec;
mod generation;
mod l1;
mod l2;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use audit_core::config::CacheConfig;
use audit_core::{
    AuditError, AuditResult, CacheStats, CacheTier, ComponentHealth, Direct, HealthState, Page, QueryCache, QueryScope,
    ResiliencePolicy, WriteMark,
};
use quick_cache::sync::{EntryAction, EntryResult, PlaceholderGuard};
use redis::FromRedisValue;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

pub use codec::CodecError;

use crate::generation::{Deps, LocalGenerations, bumps_for, deps_for, hex_lower};
use crate::l1::{EntryWeighter, EvictionHook, L1, L1Entry, Val};
use crate::l2::{Backend, Req};

/// What can go wrong inside the cache. Only [`CacheError::Config`] ever reaches a caller (from the constructor);
/// Redis failures are logged, counted and bypassed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configuration cannot work (bad Redis URL, zero budget).
    #[error("cache configuration: {0}")]
    Config(String),
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis reply did not have the expected shape.
    #[error("redis reply: {0}")]
    Parse(String),
    /// A Redis call did not finish within its bound.
    #[error("redis call `{op}` took longer than {timeout_ms} ms")]
    Timeout {
        /// The operation (`mget`, `get`, `set`, …).
        op: &'static str,
        /// The bound.
        timeout_ms: u64,
    },
    /// No pooled connection could be had.
    #[error("redis pool: {0}")]
    Pool(String),
}

impl From<redis::ParsingError> for CacheError {
    fn from(e: redis::ParsingError) -> Self {
        CacheError::Parse(e.to_string())
    }
}

impl From<CacheError> for AuditError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Config(m) => AuditError::invalid(m).with_component("cache"),
            other => AuditError::unavailable(other.to_string()).with_component("redis"),
        }
    }
}

/// Tuning that `CacheConfig` does not carry; the defaults suit production.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Bound on every Redis call, connection checkout included: a slow Redis costs a query at most this much
    /// per call before the cache bypasses it.
    pub redis_timeout: Duration,
    /// After a failed Redis call, Redis is skipped for this long (a built-in minimal breaker, so a dead Redis
    /// does not add `redis_timeout` to every query; a `ResiliencePolicy` can add a real one).
    pub redis_retry_after: Duration,
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
            redis_retry_after: Duration::from_secs(1),
            max_scope_months: 24,
            max_l2_value_bytes: 8 << 20,
            redis_pool_size: 8,
            generation_ttl: Duration::from_secs(7 * 24 * 3600),
            local_generation_slots: 4096,
        }
    }
}

/// Last observed state of Redis, for `health()`.
#[derive(Debug, Default)]
struct RedisObs {
    ok: Option<bool>,
    latency_us: u64,
    error: Option<String>,
}

/// Bumps that could not reach Redis, retried in the background until they do (grouped by hash tag).
#[derive(Debug, Default)]
struct Pending {
    groups: Mutex<BTreeMap<String, BTreeSet<String>>>,
    retrier_running: AtomicBool,
}

/// What one query checks a cached entry against.
struct Check<'a> {
    local: &'a [u64],
    remote: Option<[u8; 16]>,
    /// When the generations were read (ms on the cache clock).
    read_ms: u64,
}

/// The L1 + L2 query cache. Build it once per process from the `[cache]` configuration and share it (it is
/// `Send + Sync`). `P` wraps every Redis call (e.g. audit-resilience's circuit breaker); the default adds nothing.
pub struct TieredCache<P: ResiliencePolicy = Direct> {
    enabled: bool,
    ttl_ms: u64,
    staleness_ms: u64,
    prefix: String,
    cluster: bool,
    opts: CacheOptions,
    l1: L1,
    l2: Option<Arc<Backend>>,
    policy: P,
    locals: LocalGenerations,
    clock: Instant,
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    down_until_ms: AtomicU64,
    obs: Mutex<RedisObs>,
    pending: Arc<Pending>,
}

impl<P: ResiliencePolicy> std::fmt::Debug for TieredCache<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("enabled", &self.enabled)
            .field("prefix", &self.prefix)
            .field("l1", &self.l1)
            .field("l2", &self.l2)
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
    /// Builds the cache with explicit options and a policy that wraps every Redis call.
    pub fn with_policy(config: &CacheConfig, options: CacheOptions, policy: P) -> AuditResult<Self> {
        if config.enabled && config.max_size_mb == 0 {
            return Err(CacheError::Config("maxSizeMB must be at least 1 when the cache is enabled".into()).into());
        }
        let budget = config.max_size_mb.saturating_mul(1 << 20).max(1);
        let l2 = match (&config.redis_url, config.enabled) {
            (Some(url), true) if !url.trim().is_empty() => Some(Arc::new(Backend::new(
                url,
                config.redis_cluster_mode,
                options.redis_timeout,
                options.redis_pool_size,
            )?)),
            _ => None,
        };
        Ok(Self {
            enabled: config.enabled,
            ttl_ms: config.default_ttl.saturating_mul(1000),
            staleness_ms: config.local_staleness_ms,
            prefix: config.key_prefix.clone(),
            cluster: config.redis_cluster_mode,
            l1: L1::new(if config.enabled { budget } else { 1 << 20 }, config.max_keys),
            l2,
            policy,
            locals: LocalGenerations::new(options.local_generation_slots),
            clock: Instant::now(),
            l1_hits: AtomicU64::new(0),
            l2_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            obs: Mutex::new(RedisObs::default()),
            pending: Arc::default(),
            opts: options,
        })
    }

    /// The byte budget L1 enforces (the configured one, rounded down to a multiple of its shard count).
    pub fn l1_budget_bytes(&self) -> u64 {
        self.l1.budget
    }

    /// Whether an L2 (Redis) is configured.
    pub fn has_l2(&self) -> bool {
        self.l2.is_some()
    }

    /// Drops every L1 entry of this process (L2 and other processes are untouched).
    pub fn clear_l1(&self) {
        self.l1.cache.clear();
        self.publish_gauges();
    }

    /// Drops every entry: L1, and in Redis every key under the key prefix (values and generation tokens, found
    /// with `SCAN`, never `KEYS`; on every primary in cluster mode). Removing tokens is safe: readers recreate
    /// them with fresh random values, so no old answer can match again. Returns the number of Redis keys removed.
    pub async fn clear(&self) -> AuditResult<u64> {
        self.clear_l1();
        let Some(backend) = &self.l2 else { return Ok(0) };
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let n = backend.scan_delete(&pattern, self.opts.redis_timeout.max(Duration::from_secs(1))).await?;
        debug!(removed = n, "cache cleared");
        Ok(n)
    }

    /// Actively checks Redis (one `PING`, bounded by the Redis timeout) and reports it; `None` without Redis.
    pub async fn ping(&self) -> Option<ComponentHealth> {
        let backend = self.l2.as_ref()?;
        let started = Instant::now();
        let r: Result<String, CacheError> =
            backend.exec("ping", Req::Cmd(&redis::cmd("PING")), self.opts.redis_timeout).await;
        self.observe(&r.as_ref().map(|_| ()).map_err(|e| e.to_string()), started.elapsed());
        Some(self.redis_health())
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    fn observe(&self, r: &Result<(), String>, elapsed: Duration) {
        let mut o = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        o.latency_us = elapsed.as_micros() as u64;
        match r {
            Ok(()) => {
                o.ok = Some(true);
                o.error = None;
            }
            Err(e) => {
                o.ok = Some(false);
                o.error = Some(e.clone());
            }
        }
    }

    /// Runs one Redis request under the policy and the timeout. `None` when Redis is not configured, is being
    /// bypassed after a failure, or fails now (which starts a bypass period).
    async fn redis<T: FromRedisValue + Send + 'static>(&self, op: &'static str, call: Call) -> Option<T> {
        let backend = self.l2.as_ref()?;
        if self.now_ms() < self.down_until_ms.load(Ordering::Acquire) {
            metrics::counter!("audit_db_cache_redis_bypassed_total", "op" => op).increment(1);
            return None;
        }
        let timeout = self.opts.redis_timeout;
        let started = Instant::now();
        // Boxed here, where the lifetimes are concrete: leaving the policy's opaque future inside
        // `get_or_load`'s state machine makes that future fail the `Send` check when a caller spawns it.
        let fut: std::pin::Pin<Box<dyn Future<Output = AuditResult<T>> + Send + '_>> = Box::pin(self.policy.execute({
            let backend = backend.clone();
            move || boxed_call(backend.clone(), op, call.clone(), timeout)
        }));
        let r = fut.await;
        let elapsed = started.elapsed();
        metrics::histogram!("audit_db_cache_redis_seconds", "op" => op).record(elapsed.as_secs_f64());
        match r {
            Ok(v) => {
                self.observe(&Ok(()), elapsed);
                Some(v)
            }
            Err(e) => {
                let was_ok = self.obs.lock().map(|o| o.ok != Some(false)).unwrap_or(true);
                self.observe(&Err(e.to_string()), elapsed);
                self.down_until_ms
                    .store(self.now_ms() + self.opts.redis_retry_after.as_millis() as u64, Ordering::Release);
                metrics::counter!("audit_db_cache_redis_errors_total", "op" => op).increment(1);
                if was_ok {
                    warn!(op, error = %e, "redis unavailable; bypassing L2 and serving only provably fresh L1 answers");
                } else {
                    debug!(op, error = %e, "redis still unavailable");
                }
                None
            }
        }
    }

    /// Reads the generation tokens of `deps` (creating missing ones) and returns their fingerprint, or `None` if
    /// Redis cannot be read now.
    async fn read_remote(&self, deps: &Deps) -> Option<[u8; 16]> {
        let mut mget = redis::cmd("MGET");
        mget.arg(&deps.keys);
        let mut tokens: Vec<Option<String>> = self.redis("mget", Call::cmd(mget)).await?;
        if tokens.iter().any(Option::is_none) {
            // First reader of a period (or the token expired or was evicted): create a fresh random token unless
            // a writer got there first, then read again so that we hold whatever is current.
            let mut p = redis::pipe();
            for (k, t) in deps.keys.iter().zip(&tokens) {
                if t.is_none() {
                    p.cmd("SET")
                        .arg(k)
                        .arg(new_token())
                        .arg("PX")
                        .arg(self.opts.generation_ttl.as_millis() as u64)
                        .arg("NX")
                        .ignore();
                }
            }
            p.cmd("MGET").arg(&deps.keys);
            let (again,): (Vec<Option<String>>,) = self.redis("mget", Call::pipe(p)).await?;
            tokens = again;
            if tokens.iter().any(Option::is_none) {
                return None;
            }
        }
        let mut h = Sha256::new();
        for (k, t) in deps.keys.iter().zip(&tokens) {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(t.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&d[..16]);
        Some(fp)
    }

    fn value_key(&self, slot: &str, fp: &[u8; 16]) -> String {
        let mut h = Sha256::new();
        h.update(slot.as_bytes());
        h.update([0]);
        h.update(fp);
        format!("{}v:{}", self.prefix, hex_lower(&h.finalize()[..16]))
    }

    fn valid(&self, e: &L1Entry, c: &Check<'_>, now: u64) -> bool {
        if now >= e.expires_ms || *e.local != *c.local {
            return false;
        }
        match (self.l2.is_some(), c.remote) {
            (true, Some(fp)) => {
                if e.remote == Some(fp) {
                    e.verified_ms.fetch_max(c.read_ms, Ordering::AcqRel);
                    true
                } else {
                    false
                }
            }
            // No Redis, or Redis unreachable now: only what was proven fresh less than `localStalenessMs` ago.
            _ => now.saturating_sub(e.verified_ms.load(Ordering::Acquire)) < self.staleness_ms,
        }
    }

    fn hit(&self, tier: CacheTier) {
        let c = match tier {
            CacheTier::L1 => &self.l1_hits,
            CacheTier::L2 => &self.l2_hits,
            CacheTier::Db => &self.misses,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if tier == CacheTier::Db {
            metrics::counter!("audit_db_cache_misses_total").increment(1);
        } else {
            metrics::counter!("audit_db_cache_hits_total", "tier" => tier.as_str()).increment(1);
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!("audit_db_cache_bytes").set(self.l1.cache.weight() as f64);
        metrics::gauge!("audit_db_cache_entries").set(self.l1.cache.len() as f64);
    }

    fn entry(&self, slot: &str, page: Arc<Page>, c: &Check<'_>, expires_ms: u64) -> Val {
        let weight = self.l1.weigh(slot, &page, c.local.len());
        Arc::new(L1Entry {
            page,
            local: c.local.into(),
            remote: c.remote,
            verified_ms: AtomicU64::new(c.read_ms),
            expires_ms,
            weight,
        })
    }

    async fn fill<F, Fut>(
        &self,
        guard: PlaceholderGuard<'_, String, Val, EntryWeighter, quick_cache::DefaultHashBuilder, EvictionHook>,
        slot: &str,
        c: &Check<'_>,
        load: F,
    ) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        let vkey = c.remote.map(|fp| self.value_key(slot, &fp));
        if let Some(vkey) = &vkey {
            let mut p = redis::pipe();
            p.cmd("GET").arg(vkey).cmd("PTTL").arg(vkey);
            if let Some((Some(bytes), pttl)) = self.redis::<(Option<Vec<u8>>, i64)>("get", Call::pipe(p)).await {
                match codec::decode(&bytes) {
                    Ok((stored_slot, page)) if stored_slot == slot => {
                        let page = Arc::new(page);
                        let left = if pttl > 0 { (pttl as u64).min(self.ttl_ms) } else { self.ttl_ms };
                        let _ = guard.insert(self.entry(slot, page.clone(), c, self.now_ms() + left));
                        self.publish_gauges();
                        self.hit(CacheTier::L2);
                        return Ok((page, CacheTier::L2));
                    }
                    Ok(_) => warn!(key = %vkey, "L2 value answers another query; ignored"),
                    Err(e) => warn!(key = %vkey, error = %e, "L2 value undecodable; ignored"),
                }
            }
        }
        // On a loader error the guard drops uninserted and each waiter retries on its own.
        let page = Arc::new(load().await?);
        self.hit(CacheTier::Db);
        if self.ttl_ms > 0 {
            let _ = guard.insert(self.entry(slot, page.clone(), c, self.now_ms() + self.ttl_ms));
            self.publish_gauges();
        }
        if let Some(vkey) = vkey
            && self.ttl_ms > 0
        {
            let bytes = codec::encode(slot, &page);
            if bytes.len() <= self.opts.max_l2_value_bytes {
                let mut set = redis::cmd("SET");
                set.arg(&vkey).arg(bytes).arg("PX").arg(self.ttl_ms);
                let _: Option<()> = self.redis("set", Call::cmd(set)).await;
            } else {
                debug!(bytes = bytes.len(), "answer too large for L2");
            }
        }
        Ok((page, CacheTier::Db))
    }

    fn redis_health(&self) -> ComponentHealth {
        let o = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        let pending: usize =
            self.pending.groups.lock().map(|g| g.values().map(BTreeSet::len).sum()).unwrap_or_default();
        let status = match o.ok {
            Some(false) => HealthState::Degraded,
            _ if pending > 0 => HealthState::Degraded,
            _ => HealthState::Healthy,
        };
        ComponentHealth {
            name: "redis".into(),
            status,
            details: serde_json::json!({
                "reachable": o.ok,
                "latency_ms": o.latency_us as f64 / 1000.0,
                "last_error": o.error,
                "cluster": self.cluster,
                "bypassing": self.now_ms() < self.down_until_ms.load(Ordering::Acquire),
                "pending_invalidations": pending,
            }),
        }
    }

    /// Queues bumps that could not be written and makes sure a background task retries them.
    fn queue_pending(&self, groups: Vec<Vec<String>>) {
        let Some(backend) = &self.l2 else { return };
        {
            let mut g = self.pending.groups.lock().unwrap_or_else(|p| p.into_inner());
            for group in groups {
                let Some(first) = group.first() else { continue };
                let id = group_id(first);
                g.entry(id).or_default().extend(group);
            }
            if self.pending.retrier_running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let pending: Weak<Pending> = Arc::downgrade(&self.pending);
        let backend = backend.clone();
        let (cluster, timeout, retry, ttl) =
            (self.cluster, self.opts.redis_timeout, self.opts.redis_retry_after, self.opts.generation_ttl);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(retry).await;
                let Some(p) = pending.upgrade() else { return };
                let groups: Vec<Vec<String>> = {
                    let g = p.groups.lock().unwrap_or_else(|e| e.into_inner());
                    g.values().map(|s| s.iter().cloned().collect()).collect()
                };
                let failed = bump(&backend, cluster, &groups, timeout, ttl).await;
                let mut g = p.groups.lock().unwrap_or_else(|e| e.into_inner());
                for (i, group) in groups.iter().enumerate() {
                    if failed.contains(&i) {
                        continue;
                    }
                    if let Some(first) = group.first() {
                        let id = group_id(first);
                        if let Some(set) = g.get_mut(&id) {
                            for k in group {
                                set.remove(k);
                            }
                            if set.is_empty() {
                                g.remove(&id);
                            }
                        }
                    }
                }
                if g.is_empty() {
                    p.retrier_running.store(false, Ordering::Release);
                    debug!("pending invalidations delivered to redis");
                    return;
                }
            }
        });
    }
}

/// Replaces the token of every key of `groups` with a fresh random one. Returns the indices of groups that
/// failed. One pipeline in single-server mode; one per hash-tag group (one slot each) in cluster mode.
async fn bump(
    backend: &Backend,
    cluster: bool,
    groups: &[Vec<String>],
    timeout: Duration,
    ttl: Duration,
) -> Vec<usize> {
    let set_all = |p: &mut redis::Pipeline, group: &[String]| {
        for k in group {
            p.cmd("SET").arg(k).arg(new_token()).arg("PX").arg(ttl.as_millis() as u64).ignore();
        }
    };
    if !cluster {
        let mut p = redis::pipe();
        for g in groups {
            set_all(&mut p, g);
        }
        return match backend.exec::<()>("bump", Req::Pipe(&p), timeout).await {
            Ok(()) => Vec::new(),
            Err(e) => {
                debug!(error = %e, "generation bump failed");
                (0..groups.len()).collect()
            }
        };
    }
    let mut failed = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let mut p = redis::pipe();
        set_all(&mut p, g);
        if let Err(e) = backend.exec::<()>("bump", Req::Pipe(&p), timeout).await {
            debug!(error = %e, "generation bump failed");
            failed.push(i);
        }
    }
    failed
}

/// A Redis request the policy may run several times. Owned (`Arc`s, no borrows), so that the policy's future is
/// `'static`: a borrowing future makes `get_or_load` fail the `Send` check when callers spawn it.
#[derive(Clone)]
enum Call {
    Cmd(Arc<redis::Cmd>),
    Pipe(Arc<redis::Pipeline>),
}

impl Call {
    fn cmd(c: redis::Cmd) -> Self {
        Call::Cmd(Arc::new(c))
    }
    fn pipe(p: redis::Pipeline) -> Self {
        Call::Pipe(Arc::new(p))
    }
}

type BoxedCall<T> = std::pin::Pin<Box<dyn Future<Output = AuditResult<T>> + Send>>;

fn boxed_call<T: FromRedisValue + Send + 'static>(
    backend: Arc<Backend>,
    op: &'static str,
    call: Call,
    timeout: Duration,
) -> BoxedCall<T> {
    Box::pin(async move {
        let req = match &call {
            Call::Cmd(c) => Req::Cmd(c),
            Call::Pipe(p) => Req::Pipe(p),
        };
        backend.exec::<T>(op, req, timeout).await.map_err(AuditError::from)
    })
}

fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The part of a generation key naming its group (prefix and hash tag).
fn group_id(key: &str) -> String {
    key.rfind(":gen:").map_or(key, |i| &key[..i]).to_string()
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The L1 key of a query: organisation (length-prefixed), time bounds and the canonical filter, unambiguous.
fn slot_key(scope: &QueryScope, key: &str) -> String {
    let org = match &scope.organization_id {
        Some(o) => format!("o{}:{o}", o.len()),
        None => "*".to_string(),
    };
    let b = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |x| x.to_string());
    format!("{org}|{}|{}|{key}", b(scope.from_micros), b(scope.to_micros))
}

impl<P: ResiliencePolicy> QueryCache for TieredCache<P> {
    async fn get_or_load<F, Fut>(&self, scope: &QueryScope, key: &str, load: F) -> AuditResult<(Arc<Page>, CacheTier)>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AuditResult<Page>> + Send,
    {
        if !self.enabled {
            let page = load().await?;
            self.hit(CacheTier::Db);
            return Ok((Arc::new(page), CacheTier::Db));
        }
        let slot = slot_key(scope, key);
        let deps = deps_for(&self.prefix, scope, self.opts.max_scope_months);
        // Generations are read BEFORE the database query (see docs/caching.md for why that order matters).
        let read_ms = self.now_ms();
        let local = self.locals.read(&deps);
        let remote = if self.l2.is_some() { self.read_remote(&deps).await } else { None };
        let check = Check { local: &local, remote, read_ms };

        if let Some(e) = self.l1.cache.get(&slot)
            && self.valid(&e, &check, self.now_ms())
        {
            self.hit(CacheTier::L1);
            return Ok((e.page.clone(), CacheTier::L1));
        }
        let result = self
            .l1
            .cache
            .entry_async(&slot, |_, e| {
                if self.valid(e, &check, self.now_ms()) {
                    EntryAction::Retain(e.page.clone())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            })
            .await;
        match result {
            EntryResult::Retained(page) => {
                self.hit(CacheTier::L1);
                Ok((page, CacheTier::L1))
            }
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => self.fill(guard, &slot, &check, load).await,
            // Neither is produced by the callback above; answer from the database without caching.
            EntryResult::Removed(..) | EntryResult::Timeout => {
                let page = load().await?;
                self.hit(CacheTier::Db);
                Ok((Arc::new(page), CacheTier::Db))
            }
        }
    }

    async fn invalidate(&self, writes: &[WriteMark]) {
        if !self.enabled {
            return;
        }
        let groups = bumps_for(&self.prefix, writes);
        if groups.is_empty() {
            return;
        }
        // In-process first: this process reads its own writes even if Redis is gone.
        self.locals.bump(groups.iter().flatten());
        let Some(backend) = &self.l2 else { return };
        if self.now_ms() < self.down_until_ms.load(Ordering::Acquire) {
            self.queue_pending(groups);
            return;
        }
        let started = Instant::now();
        let failed = bump(backend, self.cluster, &groups, self.opts.redis_timeout, self.opts.generation_ttl).await;
        metrics::histogram!("audit_db_cache_redis_seconds", "op" => "bump").record(started.elapsed().as_secs_f64());
        if failed.is_empty() {
            self.observe(&Ok(()), started.elapsed());
            return;
        }
        metrics::counter!("audit_db_cache_redis_errors_total", "op" => "bump").increment(1);
        warn!(
            groups = failed.len(),
            "could not publish invalidations to redis; other processes may serve stale answers until it is reachable"
        );
        self.observe(&Err("generation bump failed".into()), started.elapsed());
        self.down_until_ms.store(self.now_ms() + self.opts.redis_retry_after.as_millis() as u64, Ordering::Release);
        let failed_groups =
            groups.into_iter().enumerate().filter(|(i, _)| failed.contains(i)).map(|(_, g)| g).collect();
        self.queue_pending(failed_groups);
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

    fn health(&self) -> Vec<ComponentHealth> {
        let s = self.stats();
        let mut out = vec![ComponentHealth {
            name: "cache".into(),
            status: HealthState::Healthy,
            details: serde_json::json!({
                "enabled": self.enabled,
                "mode": if self.l2.is_some() { "l1+l2" } else { "l1" },
                "entries": s.entries,
                "bytes": s.bytes,
                "budget_bytes": self.l1.budget,
                "hit_ratio": s.hit_ratio,
                "evictions": s.evictions,
            }),
        }];
        if self.l2.is_some() {
            out.push(self.redis_health());
            out.extend(self.policy.health());
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use audit_core::{DataClassification, NewEvent, Status, StoredEvent};
    use chrono::DateTime;

    /// An event of `org` at `micros` whose `details` hold a string of `details_len` bytes.
    pub fn event_with_details(org: &str, micros: i64, details_len: usize) -> StoredEvent {
        let mut details = serde_json::Map::new();
        details.insert("blob".into(), serde_json::Value::String("x".repeat(details_len)));
        StoredEvent {
            id: 1,
            ingested_at: DateTime::from_timestamp_micros(micros).unwrap(),
            seq: 0,
            leaf_hash: [7; 32],
            event: NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_id_supplied: false,
                timestamp: DateTime::from_timestamp_micros(micros).unwrap(),
                action: "read".into(),
                status: Status::Success,
                principal_id: Some("u".into()),
                organization_id: Some(org.into()),
                target_resource_type: None,
                target_resource_id: None,
                outcome_description: None,
                correlation_id: None,
                data_classification: DataClassification::Internal,
                retention_policy: "standard".into(),
                event_version: "1.0".into(),
                ttl: None,
                processing_latency: None,
                details,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_separate_orgs_windows_and_filters() {
        let s = |o: Option<&str>, f: Option<i64>| QueryScope {
            organization_id: o.map(str::to_string),
            from_micros: f,
            to_micros: None,
        };
        let keys = [
            slot_key(&s(Some("a"), None), "k"),
            slot_key(&s(Some("a|1"), None), "k"),
            slot_key(&s(Some("a"), Some(1)), "k"),
            slot_key(&s(None, None), "k"),
            slot_key(&s(Some("a"), None), "k2"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(group_id("p:{o:12}:gen:m:2024-01"), "p:{o:12}");
    }
}
