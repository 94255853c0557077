//! The composition: breaker checked per attempt, per-attempt timeout, bounded retry, overall deadline.
//!
//! The retry itself is `backon` over a [`RetrySchedule`]'s delays, the one retry primitive of the workspace; this
//! module supplies what `backon` leaves to its caller: one attempt (breaker permit, timeout, outcome), which errors
//! are repeated (`when`), whether the next delay is still worth it (`adjust`) and what a retry leaves behind
//! (`notify`: a log line and a metric).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use audit_core::{AuditError, AuditResult, ComponentHealth, ResiliencePolicy, RetrySchedule};
use backon::Retryable;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerState, Permit};
use crate::config::CircuitBreakerConfig;
use crate::registry::BreakerRegistry;
use crate::retry::is_retryable;

/// Counter of retries a policy made (one per repeated attempt), labelled by component.
pub const RETRIES_COUNTER: &str = audit_core::metrics::RESILIENCE_RETRIES;

/// The entry type: wraps any repeatable operation with a circuit breaker, per-attempt timeout, bounded retry and
/// an overall deadline, without knowing what the operation is.
///
/// For each attempt: ask the breaker (an open breaker fails fast and is never retried), run the operation under
/// `min(attempt timeout, overall deadline)`, report the outcome to the breaker, then retry only Transient and
/// Unavailable errors ([`is_retryable`]), only while the schedule has delays left, the breaker is not open, and the
/// jittered delay ends before the deadline. Otherwise the last error is returned as it was (with `component` set to
/// the breaker's name when it named none).
#[derive(Debug, Clone)]
pub struct Policy {
    breaker: Option<Arc<Breaker>>,
    retry: RetrySchedule,
    attempt_timeout: Option<Duration>,
    deadline: Duration,
}

impl Policy {
    /// A policy around `breaker` with the default `[circuitBreaker]` retry schedule and overall deadline (30 s) and
    /// no per-attempt timeout.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker: Some(breaker), ..Self::without_breaker() }
    }

    /// A policy without a breaker (`circuitBreaker.enabled = false`): retry and deadlines only.
    pub fn without_breaker() -> Self {
        let cfg = CircuitBreakerConfig::default();
        Self { breaker: None, retry: cfg.retry_schedule(), attempt_timeout: None, deadline: cfg.deadline() }
    }

    /// From `[circuitBreaker]`: the registry's breaker `component` when enabled, `retryAttempts` attempts and a
    /// `timeoutMs` overall deadline; no per-attempt timeout.
    pub fn from_config(cfg: &CircuitBreakerConfig, registry: &BreakerRegistry, component: &str) -> Self {
        Self {
            breaker: cfg.enabled.then(|| registry.get_or_create(component)),
            retry: cfg.retry_schedule(),
            attempt_timeout: None,
            deadline: cfg.deadline(),
        }
    }

    /// [`Policy::from_config`] for a database component, with a per-attempt timeout of `connect_timeout +
    /// query_timeout` (`[database] connectionTimeout + queryTimeout`): long enough that the server-side
    /// `statement_timeout` normally fires first (a clean 57014), short enough to give up on a connection that no
    /// longer answers at all. Takes the two durations rather than the database section so that this crate stays
    /// independent of the PostgreSQL layer.
    pub fn for_database(
        cfg: &CircuitBreakerConfig,
        registry: &BreakerRegistry,
        component: &str,
        connect_timeout: Duration,
        query_timeout: Duration,
    ) -> Self {
        let per_attempt = connect_timeout.saturating_add(query_timeout);
        Self::from_config(cfg, registry, component).with_attempt_timeout(Some(per_attempt))
    }

    /// Replaces the retry schedule ([`RetrySchedule::none`]: one attempt).
    pub fn with_retry(mut self, retry: RetrySchedule) -> Self {
        self.retry = retry;
        self
    }

    /// Sets (or removes) the per-attempt timeout.
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets the overall deadline of one call, retries and delays included.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The breaker, if any.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        self.breaker.as_ref()
    }

    /// The retry schedule.
    pub fn retry(&self) -> &RetrySchedule {
        &self.retry
    }

    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The overall deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn label(&self) -> &str {
        self.breaker.as_ref().map_or("operation", |b| b.name())
    }

    /// Runs `op` with `backon` over the schedule's delays; the attempt number is shared with the hooks for their
    /// messages (an atomic, so that the whole future stays `Send`).
    async fn run<T, F, Fut>(&self, mut op: F) -> AuditResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = AuditResult<T>>,
    {
        let deadline = Instant::now() + self.deadline;
        let attempts = AtomicU32::new(0);
        let attempt = || {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            // Ask the breaker before creating the operation's future: a refused call never starts.
            let admitted = self.admit().map(|permit| (permit, op()));
            async move {
                let (permit, call) = admitted?;
                self.attempt(n, permit, call, deadline).await
            }
        };
        attempt
            .retry(self.retry.delays(rand::random()))
            .when(is_retryable)
            .adjust(|err, delay| self.next_delay(err, delay, deadline, attempts.load(Ordering::Relaxed)))
            .notify(|err, delay| self.note_retry(err, delay, attempts.load(Ordering::Relaxed)))
            .await
    }

    /// The breaker's permission for one attempt (`None` without a breaker); `Err` is its CircuitOpen refusal.
    fn admit(&self) -> AuditResult<Option<Permit<'_>>> {
        self.breaker.as_deref().map(Breaker::try_acquire).transpose()
    }

    /// One admitted attempt: `call` under `min(attempt timeout, deadline)`, the component filled in, the outcome
    /// reported to the breaker.
    async fn attempt<T>(
        &self,
        n: u32,
        permit: Option<Permit<'_>>,
        call: impl Future<Output = AuditResult<T>>,
        deadline: Instant,
    ) -> AuditResult<T> {
        let per_attempt = self.attempt_timeout.map(|t| Instant::now() + t).filter(|end| *end < deadline);
        let result = match tokio::time::timeout_at(per_attempt.unwrap_or(deadline), call).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(n, per_attempt.is_some())),
        };
        // The breaker guards one dependency, so an error that names none came from it.
        let result = match &self.breaker {
            Some(b) => result.map_err(|e| e.or_component(b.name())),
            None => result,
        };
        if let Some(p) = permit {
            p.record(&result);
        }
        result
    }

    /// The Unavailable error of an attempt cut short, saying which limit cut it.
    fn timed_out(&self, attempt: u32, by_attempt_timeout: bool) -> AuditError {
        let label = self.label();
        let message = match self.attempt_timeout {
            Some(t) if by_attempt_timeout => {
                format!("{label} attempt {attempt} timed out after {} ms", t.as_millis())
            }
            _ => format!(
                "{label} call timed out: its overall deadline of {} ms passed during attempt {attempt}",
                self.deadline.as_millis()
            ),
        };
        let error = AuditError::unavailable(message);
        match &self.breaker {
            Some(b) => error.with_component(b.name()),
            None => error,
        }
    }

    /// `backon`'s `adjust`: the schedule's next delay (`None` once its attempts are used up), unless the breaker has
    /// opened meanwhile (a retry would only be refused) or the delay would end at or after the overall deadline.
    fn next_delay(
        &self,
        err: &AuditError,
        delay: Option<Duration>,
        deadline: Instant,
        attempt: u32,
    ) -> Option<Duration> {
        let delay = delay?;
        if let Some(b) = &self.breaker
            && b.state() == BreakerState::Open
        {
            tracing::debug!(breaker = b.name(), attempt, error = %err, "not retrying: breaker is open");
            return None;
        }
        if Instant::now() + delay >= deadline {
            tracing::debug!(component = self.label(), attempt, error = %err, "not retrying: deadline reached");
            return None;
        }
        Some(delay)
    }

    /// `backon`'s `notify`: a retry is about to wait `delay`.
    fn note_retry(&self, err: &AuditError, delay: Duration, attempt: u32) {
        tracing::debug!(
            component = self.label(),
            attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %err,
            "retrying after error"
        );
        metrics::counter!(RETRIES_COUNTER, "component" => self.label().to_string()).increment(1);
    }
}

impl ResiliencePolicy for Policy {
    fn execute<T, F, Fut>(&self, op: F) -> impl Future<Output = AuditResult<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = AuditResult<T>> + Send,
    {
        self.run(op)
    }

    fn health(&self) -> Vec<ComponentHealth> {
        self.breaker.iter().map(|b| b.status().to_health()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_metrics::Capture;

    #[tokio::test(start_paused = true)]
    async fn each_retry_is_counted_under_the_breaker_name_and_refusals_are_not_retried() {
        let capture = Capture::default();
        let _recorder = metrics::set_default_local_recorder(&capture);
        let cfg = CircuitBreakerConfig { failure_threshold: 3, retry_attempts: 3, ..Default::default() };
        let registry = BreakerRegistry::from_config(&cfg);
        let policy = Policy::from_config(&cfg, &registry, "primary");
        let calls = AtomicU32::new(0);
        let err = policy
            .execute(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(AuditError::transient("could not serialize access")) }
            })
            .await
            .unwrap_err();
        assert_eq!((calls.load(Ordering::SeqCst), err.component()), (3, Some("primary")));
        let retry = ("primary".to_string(), 1.0);
        assert_eq!(capture.by_label(RETRIES_COUNTER, "component"), [retry.clone(), retry.clone()], "3 attempts");

        // Three Unavailable attempts open the breaker; the next call is refused once, fast, and not retried.
        let _ = policy.execute(|| async { Err::<(), _>(AuditError::unavailable("connection refused")) }).await;
        let retries_before = capture.by_label(RETRIES_COUNTER, "component").len();
        let refused = policy.execute(|| async { Ok(()) }).await.unwrap_err();
        assert_eq!(refused.kind(), audit_core::ErrorKind::CircuitOpen);
        assert_eq!(refused.component(), Some("primary"));
        assert_eq!(capture.by_label(RETRIES_COUNTER, "component").len(), retries_before);
    }
}
