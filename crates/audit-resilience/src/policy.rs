//! The composition: breaker checked per attempt, per-attempt timeout, bounded retry, overall deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use audit_core::config::{CircuitBreakerConfig, DatabaseConfig};
use audit_core::{AuditError, AuditResult, ComponentHealth, ResiliencePolicy};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerState};
use crate::registry::BreakerRegistry;
use crate::retry::RetryPolicy;

/// Counter of retries a policy made (one per repeated attempt), labelled by component.
pub const RETRIES_COUNTER: &str = "audit_db_resilience_retries_total";

/// The entry type: wraps any repeatable operation with a circuit breaker, per-attempt timeout, bounded retry and
/// an overall deadline, without knowing what the operation is.
///
/// For each attempt: ask the breaker (an open breaker fails fast and is never retried), run the operation under
/// `min(attempt timeout, overall deadline)`, report the outcome to the breaker, then retry only Transient and
/// Unavailable errors, only while attempts remain, the breaker is not open, and the jittered delay ends before
/// the deadline. Otherwise the last error is returned as it was (with `component` set to the breaker's name when
/// it named none).
#[derive(Debug, Clone)]
pub struct Policy {
    breaker: Option<Arc<Breaker>>,
    retry: RetryPolicy,
    attempt_timeout: Option<Duration>,
    deadline: Duration,
}

impl Policy {
    /// A policy around `breaker` with the default retry ([`RetryPolicy::default`]), no per-attempt timeout and the
    /// default 30 s overall deadline.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker: Some(breaker), ..Self::without_breaker() }
    }

    /// A policy without a breaker (`circuitBreaker.enabled = false`): retry and deadlines only.
    pub fn without_breaker() -> Self {
        let cfg = CircuitBreakerConfig::default();
        Self {
            breaker: None,
            retry: RetryPolicy::from_config(&cfg),
            attempt_timeout: None,
            deadline: Duration::from_millis(cfg.timeout_ms),
        }
    }

    /// From `[circuitBreaker]`: the registry's breaker `component` when enabled, `retryAttempts` attempts and a
    /// `timeoutMs` overall deadline; no per-attempt timeout.
    pub fn from_config(cfg: &CircuitBreakerConfig, registry: &BreakerRegistry, component: &str) -> Self {
        Self {
            breaker: cfg.enabled.then(|| registry.get_or_create(component)),
            retry: RetryPolicy::from_config(cfg),
            attempt_timeout: None,
            deadline: Duration::from_millis(cfg.timeout_ms),
        }
    }

    /// [`Policy::from_config`] for a database component, with a per-attempt timeout of `connectionTimeout +
    /// queryTimeout`: long enough that the server-side `statement_timeout` normally fires first (a clean 57014),
    /// short enough to give up on a connection that no longer answers at all.
    pub fn for_database(
        cfg: &CircuitBreakerConfig,
        db: &DatabaseConfig,
        registry: &BreakerRegistry,
        component: &str,
    ) -> Self {
        let per_attempt = Duration::from_millis(db.connection_timeout.saturating_add(db.query_timeout));
        Self::from_config(cfg, registry, component).with_attempt_timeout(Some(per_attempt))
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
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

    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
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

    async fn run<T, F, Fut>(&self, mut op: F) -> AuditResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = AuditResult<T>>,
    {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let permit = match &self.breaker {
                Some(b) => Some(b.try_acquire()?),
                None => None,
            };
            let now = Instant::now();
            let per_attempt = self.attempt_timeout.map(|t| now + t).filter(|end| *end < deadline);
            let result = match tokio::time::timeout_at(per_attempt.unwrap_or(deadline), op()).await {
                Ok(result) => result,
                Err(_) => Err(self.timed_out(attempt, per_attempt.is_some())),
            };
            // The breaker guards one dependency, so an error that names none came from it.
            let result = result.map_err(|e| match (&e.component, &self.breaker) {
                (None, Some(b)) => e.with_component(b.name()),
                _ => e,
            });
            if let Some(p) = permit {
                p.record(&result);
            }
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !self.retry.should_retry(&err, attempt) {
                return Err(err);
            }
            if let Some(b) = &self.breaker
                && b.state() == BreakerState::Open
            {
                tracing::debug!(breaker = b.name(), attempt, error = %err, "not retrying: breaker is open");
                return Err(err);
            }
            let delay = self.retry.delay(attempt);
            if Instant::now() + delay >= deadline {
                tracing::debug!(component = self.label(), attempt, error = %err, "not retrying: deadline reached");
                return Err(err);
            }
            tracing::debug!(
                component = self.label(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "retrying after error"
            );
            metrics::counter!(RETRIES_COUNTER, "component" => self.label().to_string()).increment(1);
            tokio::time::sleep(delay).await;
        }
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
