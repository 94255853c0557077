//! Which failed attempts a protected call repeats. *When* to repeat them is [`RetrySchedule`] (audit-core), the one
//! retry schedule of the workspace; [`crate::Policy`] runs the attempts with `backon` over its delays.

use std::time::Duration;

use audit_core::AuditError;
pub use audit_core::RetrySchedule;

/// Default delay ceiling of the first retry of a protected call.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(50);
/// Default longest delay between two attempts of a protected call.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether a protected call repeats an attempt that failed with `error`: only Transient and Unavailable errors (a
/// serialization failure or a lost connection may go away; bad input, broken integrity or a missing table will not),
/// and never a refusal by an open breaker — waiting for the breaker is the breaker's job. Decided by kind and class,
/// never by message text.
pub fn is_retryable(error: &AuditError) -> bool {
    error.class().is_retryable() && !error.is_circuit_open()
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::ErrorClass;

    /// Whether attempt number `attempts_made` (1-based), failing with `error`, gets another attempt: the error rule
    /// and the schedule's delays, combined as [`crate::Policy`] combines them.
    fn should_retry(r: &RetrySchedule, error: &AuditError, attempts_made: u32) -> bool {
        is_retryable(error) && r.delays(rand::random()).nth(attempts_made as usize - 1).is_some()
    }

    #[test]
    fn only_transient_and_unavailable_are_retried() {
        let r = RetrySchedule::new(3, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX);
        for (class, retried) in [
            (ErrorClass::Transient, true),
            (ErrorClass::Unavailable, true),
            (ErrorClass::InvalidInput, false),
            (ErrorClass::Integrity, false),
            (ErrorClass::Permanent, false),
        ] {
            assert_eq!(should_retry(&r, &AuditError::of_class(class, "x"), 1), retried, "{class}");
        }
        assert!(!should_retry(&r, &AuditError::unavailable("x"), 3), "the last attempt is the last");
        let open = AuditError::circuit_open("breaker `p` is open");
        assert!(!should_retry(&r, &open, 1), "an open breaker means fail fast");
        assert!(!should_retry(
            &RetrySchedule::new(0, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX),
            &AuditError::unavailable("x"),
            1
        ));
    }

    #[test]
    fn delays_stay_under_a_doubling_capped_ceiling() {
        let r = RetrySchedule::new(41, Duration::from_millis(30), Duration::from_millis(700));
        let ceilings: Vec<_> = (1..=8).map(|n| r.delay_ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [30, 60, 120, 240, 480, 700, 700, 700].map(Duration::from_millis).to_vec(),
            "sub-second bases must work"
        );
        for seed in 0..20 {
            for (n, delay) in (1..=40).zip(r.delays(seed)) {
                assert!(delay <= r.delay_ceiling(n));
            }
        }
        assert_eq!(RetrySchedule::none().delays(1).sum::<Duration>(), Duration::ZERO);
    }
}
