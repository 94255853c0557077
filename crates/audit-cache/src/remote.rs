//! Redis call plumbing: every Redis request the cache makes goes through [`Remote`] — under the cache's
//! `ResiliencePolicy`, bounded by the Redis timeout, timed, counted — and its outcome is kept for the health
//! report.
//!
//! There is no breaker here: failing fast on a dead Redis is the policy's job (audit-resilience's circuit breaker
//! in production, so that one breaker implementation serves every dependency). With [`audit_core::Direct`], every
//! call may cost up to the Redis timeout while Redis is down.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_core::{AuditError, AuditResult, ComponentHealth, HealthState, ResiliencePolicy, RetrySchedule};
use redis::FromRedisValue;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{CacheConfig, CacheOptions};
use crate::error::CacheError;
use crate::invalidate::Pending;
use crate::l2::{Backend, Req};

/// A Redis request the policy may run several times. Owned (`Arc`s, no borrows), so that the policy's future is
/// `'static`: a borrowing future makes `get_or_load` fail the `Send` check when callers spawn it.
#[derive(Clone)]
pub(crate) enum Call {
    Cmd(Arc<redis::Cmd>),
    Pipe(Arc<redis::Pipeline>),
}

impl Call {
    pub(crate) fn cmd(c: redis::Cmd) -> Self {
        Call::Cmd(Arc::new(c))
    }

    pub(crate) fn pipe(p: redis::Pipeline) -> Self {
        Call::Pipe(Arc::new(p))
    }

    fn req(&self) -> Req<'_> {
        match self {
            Call::Cmd(c) => Req::Cmd(c),
            Call::Pipe(p) => Req::Pipe(p),
        }
    }
}

/// One attempt of a Redis operation, as handed to the policy.
pub(crate) type Attempt<T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send>>;

/// The outcome of the last Redis call, for `health()`.
#[derive(Debug, Default)]
struct Observation {
    ok: Option<bool>,
    latency_us: u64,
    error: Option<String>,
}

/// The Redis side of one cache: transport, policy, bounds, observations and the invalidations still owed to Redis.
/// Shared (`Arc`) with the background task that re-sends those invalidations.
pub(crate) struct Remote<P> {
    backend: Arc<Backend>,
    policy: P,
    pub(crate) timeout: Duration,
    pub(crate) cluster: bool,
    /// Key prefix of the cache (generation keys and values).
    pub(crate) prefix: String,
    pub(crate) generation_ttl: Duration,
    /// When to re-send bumps that failed.
    pub(crate) retry: RetrySchedule,
    /// Most keys held in `pending` before it collapses to "replace every generation".
    pub(crate) max_pending: usize,
    /// Bumps that could not reach Redis yet.
    pub(crate) pending: Mutex<Pending>,
    obs: Mutex<Observation>,
}

impl<P> std::fmt::Debug for Remote<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("backend", &self.backend).field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl<P: ResiliencePolicy> Remote<P> {
    /// The Redis side over `backend`, configured from `[cache]` and the options; no connection is made here.
    pub(crate) fn new(backend: Backend, policy: P, config: &CacheConfig, options: &CacheOptions) -> Self {
        Self {
            backend: Arc::new(backend),
            policy,
            timeout: options.redis_timeout,
            cluster: config.redis_cluster_mode,
            prefix: config.key_prefix.clone(),
            generation_ttl: options.generation_ttl,
            retry: options.invalidation_retry.clone(),
            max_pending: options.max_pending_invalidations,
            pending: Mutex::default(),
            obs: Mutex::default(),
        }
    }

    /// Runs one command or pipeline under the policy, each attempt bounded by the Redis timeout.
    pub(crate) async fn call<T: FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        call: Call,
    ) -> AuditResult<T> {
        let timeout = self.timeout;
        self.run(op, move |backend| -> Attempt<T> {
            let call = call.clone();
            Box::pin(async move { backend.exec(op, call.req(), timeout).await })
        })
        .await
    }

    /// Runs `attempt` under the policy, then records latency and outcome (metrics, health, a warning when Redis
    /// goes from answering to failing).
    pub(crate) async fn run<T, F>(&self, op: &'static str, attempt: F) -> AuditResult<T>
    where
        T: Send + 'static,
        F: Fn(Arc<Backend>) -> Attempt<T> + Send + Sync + 'static,
    {
        let started = Instant::now();
        let backend = self.backend.clone();
        // Boxed here, where the lifetimes are concrete: leaving the policy's opaque future inside `get_or_load`'s
        // state machine makes that future fail the `Send` check when a caller spawns it.
        let fut: Pin<Box<dyn Future<Output = AuditResult<T>> + Send + '_>> = Box::pin(self.policy.execute(move || {
            let call = attempt(backend.clone());
            async move { call.await.map_err(AuditError::from) }
        }));
        let result = fut.await;
        let elapsed = started.elapsed();
        metrics::histogram!(audit_core::metrics::CACHE_REDIS_DURATION, "op" => op).record(elapsed.as_secs_f64());
        match &result {
            Ok(_) => {
                self.observe(Ok(()), elapsed);
            }
            Err(e) => {
                if e.is_circuit_open() {
                    metrics::counter!(audit_core::metrics::CACHE_REDIS_BYPASSED, "op" => op).increment(1);
                } else {
                    metrics::counter!(audit_core::metrics::CACHE_REDIS_ERRORS, "op" => op).increment(1);
                }
                if self.observe(Err(e), elapsed) {
                    warn!(op, error = %e, "redis unavailable; bypassing L2 and serving only provably fresh L1 answers");
                } else {
                    debug!(op, error = %e, "redis still unavailable");
                }
            }
        }
        result
    }

    /// Actively checks Redis with one `PING` bounded by the Redis timeout. Not through the policy: a health check
    /// must report what Redis does now, not what the breaker remembers.
    pub(crate) async fn ping(&self) -> ComponentHealth {
        let started = Instant::now();
        let r: Result<String, CacheError> =
            self.backend.exec("ping", Req::Cmd(&redis::cmd("PING")), self.timeout).await;
        let r = r.map(drop).map_err(AuditError::from);
        self.observe(r.as_ref().map(|_| ()), started.elapsed());
        self.health()
    }

    /// Records the outcome of a call; returns whether Redis just went from answering (or unknown) to failing.
    fn observe(&self, r: Result<(), &AuditError>, elapsed: Duration) -> bool {
        let mut o = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        let was_ok = o.ok != Some(false);
        o.latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        match r {
            Ok(()) => {
                o.ok = Some(true);
                o.error = None;
                false
            }
            Err(e) => {
                o.ok = Some(false);
                o.error = Some(e.to_string());
                was_ok
            }
        }
    }

    /// The policy's own components (breaker state), for the health report.
    pub(crate) fn policy_health(&self) -> Vec<ComponentHealth> {
        self.policy.health()
    }

    /// Whether Redis answered the last call (`None` before the first).
    pub(crate) fn reachable(&self) -> Option<bool> {
        self.obs.lock().unwrap_or_else(|p| p.into_inner()).ok
    }

    /// The `redis` component: degraded when the last call failed or invalidations are still owed to Redis.
    pub(crate) fn health(&self) -> ComponentHealth {
        let (pending_keys, pending_all) = {
            let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            (p.keys_len(), p.owes_everything())
        };
        let o = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        let status = if o.ok == Some(false) || pending_keys > 0 || pending_all {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        };
        ComponentHealth {
            name: "redis".into(),
            status,
            details: serde_json::json!({
                "reachable": o.ok,
                "latency_ms": o.latency_us as f64 / 1000.0,
                "last_error": o.error,
                "cluster": self.cluster,
                "pending_invalidations": pending_keys,
                "pending_invalidate_all": pending_all,
            }),
        }
    }
}
