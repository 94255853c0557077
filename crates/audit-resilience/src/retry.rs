//! Bounded retry with exponential backoff and full jitter.

use std::time::Duration;

use audit_core::AuditError;
use audit_core::config::CircuitBreakerConfig;
use rand::Rng;

/// Default delay ceiling of the first retry.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(50);
/// Default longest delay between two attempts.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(2);

/// How often and how patiently to repeat a failed attempt. Only Transient and Unavailable errors are retried
/// (a serialization failure or a lost connection may go away; bad input, broken integrity or a missing table will
/// not), and never a refusal by an open breaker: waiting for the breaker is the breaker's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (`retryAttempts`; `0` behaves as `1`).
    pub max_attempts: u32,
    /// Delay ceiling before the first retry; it doubles for each further retry.
    pub base_delay: Duration,
    /// Cap of the delay ceiling.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts and full-jitter delays from `base_delay` doubling up to `max_delay`.
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self { max_attempts, base_delay, max_delay }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    /// `retryAttempts` attempts with [`DEFAULT_RETRY_BASE`] and [`DEFAULT_RETRY_MAX`].
    pub fn from_config(cfg: &CircuitBreakerConfig) -> Self {
        Self::new(cfg.retry_attempts, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX)
    }

    /// Whether `error`, returned by attempt number `attempts_made` (1-based), deserves another attempt.
    pub fn should_retry(&self, error: &AuditError, attempts_made: u32) -> bool {
        error.class.is_retryable() && !error.is_circuit_open() && attempts_made < self.max_attempts.max(1)
    }

    /// The ceiling of the delay before retry number `retry` (1-based): `min(max_delay, base_delay · 2^(retry-1))`.
    pub fn delay_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay before retry number `retry` (1-based), drawn uniformly from `[0, delay_ceiling(retry)]` ("full
    /// jitter": clients that failed together do not retry together).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.delay_ceiling(retry);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from_config(&CircuitBreakerConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::ErrorClass;

    #[test]
    fn only_transient_and_unavailable_are_retried() {
        let r = RetryPolicy::new(3, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX);
        for (class, retried) in [
            (ErrorClass::Transient, true),
            (ErrorClass::Unavailable, true),
            (ErrorClass::InvalidInput, false),
            (ErrorClass::Integrity, false),
            (ErrorClass::Permanent, false),
        ] {
            assert_eq!(r.should_retry(&AuditError::new(class, "x"), 1), retried, "{class}");
        }
        assert!(!r.should_retry(&AuditError::unavailable("x"), 3), "the last attempt is the last");
        let open = AuditError::unavailable(format!("{}: breaker `p` is open", audit_core::error::CIRCUIT_OPEN_PREFIX));
        assert!(!r.should_retry(&open, 1), "an open breaker means fail fast");
        assert!(
            !RetryPolicy::new(0, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX).should_retry(&AuditError::unavailable("x"), 1)
        );
    }

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let r = RetryPolicy::new(20, Duration::from_millis(30), Duration::from_millis(700));
        let ceilings: Vec<_> = (1..=8).map(|n| r.delay_ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [30, 60, 120, 240, 480, 700, 700, 700].map(Duration::from_millis).to_vec(),
            "sub-second bases must work"
        );
        for n in 1..=40 {
            for _ in 0..20 {
                assert!(r.delay(n) <= r.delay_ceiling(n));
            }
        }
        assert_eq!(RetryPolicy::none().delay(1), Duration::ZERO);
    }
}
