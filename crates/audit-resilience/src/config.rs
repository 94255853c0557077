//! `[circuitBreaker]`: breakers, retries and the overall deadline of one protected call.

use std::time::Duration;

use audit_core::RetrySchedule;
use serde::{Deserialize, Serialize};

use crate::retry::{DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX};

/// `[circuitBreaker]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Use breakers at all.
    pub enabled: bool,
    /// Consecutive unavailable errors that open a breaker.
    pub failure_threshold: u32,
    /// Overall deadline of one protected call including retries, ms.
    pub timeout_ms: u64,
    /// First open period, ms (grows with jitter on repeated failure).
    pub reset_timeout_ms: u64,
    /// Calls admitted while half-open.
    pub half_open_probes: u32,
    /// Attempts per call (1 = no retry).
    pub retry_attempts: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            timeout_ms: 30_000,
            reset_timeout_ms: 1_000,
            half_open_probes: 1,
            retry_attempts: 5,
        }
    }
}

impl CircuitBreakerConfig {
    /// The retry schedule of a protected call: `retryAttempts` attempts, full-jitter delays from
    /// [`DEFAULT_RETRY_BASE`] doubling up to [`DEFAULT_RETRY_MAX`] (short enough to ride out a failover or a serialization conflict inside `timeoutMs`).
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule::new(self.retry_attempts, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX)
    }

    /// The overall deadline of one protected call (`timeoutMs`).
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.failure_threshold == 0 {
            return Err(("circuitBreaker.failureThreshold", "must be at least 1".into()));
        }
        if self.half_open_probes == 0 {
            return Err(("circuitBreaker.halfOpenProbes", "must be at least 1".into()));
        }
        Ok(())
    }
}
