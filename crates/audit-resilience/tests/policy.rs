//! Retry, deadline, timeout and probe-bound behaviour of the composed policy, on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use audit_core::{AuditError, AuditResult, ErrorClass, HealthState, ResiliencePolicy};
use audit_resilience::{
    Breaker, BreakerRegistry, BreakerSettings, BreakerState, CircuitBreakerConfig, OpenBackoff, Policy, RetrySchedule,
    TripPolicy, names, with_timeout,
};
use tokio::time::Instant;

/// SQLSTATE `serialization_failure`.
const SERIALIZATION_FAILURE: &str = "40001";

fn breaker(threshold: u32, reset: Duration, probes: u32) -> Arc<Breaker> {
    Arc::new(Breaker::new(
        "primary",
        &BreakerSettings {
            trip: TripPolicy::consecutive_failures(threshold),
            open_backoff: OpenBackoff::new(reset, reset * 4),
            half_open_probes: probes,
        },
    ))
}

fn retry(attempts: u32) -> RetrySchedule {
    RetrySchedule::new(attempts, Duration::from_millis(20), Duration::from_millis(200))
}

/// Runs `policy` over an operation that always fails with `class`, returning the error and how often it ran.
async fn always_failing(policy: &Policy, class: ErrorClass) -> (AuditError, u32) {
    let calls = AtomicU32::new(0);
    let err = policy
        .execute(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(AuditError::of_class(class, format!("simulated {class}"))) }
        })
        .await
        .unwrap_err();
    (err, calls.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn attempts_per_error_class() {
    for (class, expected) in [
        (ErrorClass::Transient, 4),
        (ErrorClass::Unavailable, 4),
        (ErrorClass::InvalidInput, 1),
        (ErrorClass::Integrity, 1),
        (ErrorClass::Permanent, 1),
    ] {
        let policy = Policy::new(breaker(100, Duration::from_secs(1), 1)).with_retry(retry(4));
        let (err, calls) = always_failing(&policy, class).await;
        assert_eq!(calls, expected, "{class}");
        assert_eq!(err.class(), class, "the last error is returned as it was");
        assert!(!err.is_circuit_open());
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failure_then_success_is_retried_to_success() {
    let policy = Policy::new(breaker(3, Duration::from_secs(1), 1)).with_retry(retry(5));
    let calls = AtomicU32::new(0);
    let value = policy
        .execute(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(AuditError::from_sqlstate(SERIALIZATION_FAILURE.parse().unwrap(), "could not serialize access"))
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    assert_eq!(policy.breaker().unwrap().status().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_stops_retries_and_later_calls_fail_fast() {
    let policy = Policy::new(breaker(2, Duration::from_secs(5), 1)).with_retry(retry(10));
    let (err, calls) = always_failing(&policy, ErrorClass::Unavailable).await;
    assert_eq!(calls, 2, "retries stop as soon as the breaker opens");
    assert!(!err.is_circuit_open(), "the caller sees the dependency's own error: {err}");
    assert_eq!(err.component(), Some("primary"));

    let (err, calls) = always_failing(&policy, ErrorClass::Unavailable).await;
    assert_eq!(calls, 0, "an open breaker never calls the operation");
    assert!(err.is_circuit_open() && err.message().contains("primary"), "{err}");
    assert_eq!(policy.health()[0].status, HealthState::Unhealthy);

    // After the open period a probe goes through and a success closes the breaker.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(policy.breaker().unwrap().state(), BreakerState::HalfOpen);
    assert_eq!(policy.execute(|| async { Ok(7) }).await.unwrap(), 7);
    assert_eq!(policy.breaker().unwrap().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn overall_deadline_bounds_retries() {
    let deadline = Duration::from_millis(1_000);
    let policy = Policy::without_breaker()
        .with_retry(RetrySchedule::new(1_000, Duration::from_millis(50), Duration::from_millis(100)))
        .with_deadline(deadline);
    let calls = AtomicU32::new(0);
    let started = Instant::now();
    let err = policy
        .execute(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(120)).await;
                Err::<(), _>(AuditError::unavailable("connection refused"))
            }
        })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed <= deadline, "virtual time spent {elapsed:?} exceeds the deadline");
    let calls = calls.load(Ordering::SeqCst);
    assert!((2..=9).contains(&calls), "{calls} attempts of 120 ms cannot fit, or do fit, in 1 s");
    assert_eq!(err.class(), ErrorClass::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_hanging_attempt() {
    let policy = Policy::without_breaker().with_retry(retry(3)).with_deadline(Duration::from_millis(300));
    let started = Instant::now();
    let err = policy.execute(std::future::pending::<AuditResult<()>>).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(310), "{elapsed:?}");
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert!(err.message().contains("overall deadline of 300 ms passed during attempt 1"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_counts_against_the_breaker_and_is_retried() {
    let policy = Policy::new(breaker(3, Duration::from_secs(1), 1))
        .with_retry(retry(2))
        .with_attempt_timeout(Some(Duration::from_millis(100)))
        .with_deadline(Duration::from_secs(10));
    let calls = AtomicU32::new(0);
    let err = policy
        .execute(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<AuditResult<()>>()
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert!(err.message().contains("primary attempt 2 timed out after 100 ms"), "{err}");
    assert_eq!(policy.breaker().unwrap().status().consecutive_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn with_timeout_maps_elapsed_to_unavailable() {
    let err = with_timeout(Duration::from_millis(250), "redis GET", std::future::pending::<AuditResult<u8>>())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.message(), "redis GET timed out after 250 ms");
    let ok = with_timeout(Duration::from_millis(250), "redis GET", async { Ok(3) }).await;
    assert_eq!(ok.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_the_configured_probes_concurrently() {
    let b = breaker(1, Duration::from_millis(200), 2);
    b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
    tokio::time::advance(Duration::from_millis(200)).await;

    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (b, running, peak) = (b.clone(), running.clone(), peak.clone());
        tasks.spawn(async move {
            b.call(async {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
            .await
        });
    }
    let results = tasks.join_all().await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 2);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(AuditError::is_circuit_open));
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn repeated_probe_failures_lengthen_the_open_period_from_a_sub_second_start() {
    let b = breaker(1, Duration::from_millis(100), 1);
    b.try_acquire().unwrap().failed(&AuditError::unavailable("down"));
    let mut periods = vec![b.status().open_remaining.unwrap()];
    for _ in 0..5 {
        tokio::time::advance(*periods.last().unwrap()).await;
        b.try_acquire().unwrap().failed(&AuditError::unavailable("still down"));
        periods.push(b.status().open_remaining.unwrap());
    }
    assert_eq!(periods[0], Duration::from_millis(100));
    for (n, p) in periods.iter().enumerate() {
        let ceiling = Duration::from_millis(100 << n).min(Duration::from_millis(400));
        assert!(*p >= Duration::from_millis(100) && *p <= ceiling, "period {n}: {p:?}");
    }
    assert!(periods[5] >= Duration::from_millis(200), "capped periods are drawn from [max/2, max]");
}

#[tokio::test(start_paused = true)]
async fn config_constructors_wire_registry_breakers() {
    let cfg = CircuitBreakerConfig { failure_threshold: 1, retry_attempts: 3, timeout_ms: 5_000, ..Default::default() };
    let registry = BreakerRegistry::from_config(&cfg);
    let (connection_timeout, query_timeout) = (Duration::from_millis(1_000), Duration::from_millis(2_000));
    let policy = Policy::for_database(&cfg, &registry, names::PRIMARY, connection_timeout, query_timeout);
    assert_eq!(policy.attempt_timeout(), Some(Duration::from_millis(3_000)));
    assert_eq!(policy.deadline(), Duration::from_millis(5_000));
    assert_eq!(policy.retry().max_attempts, 3);
    assert!(Arc::ptr_eq(policy.breaker().unwrap(), &registry.get_or_create(names::PRIMARY)));

    let (_, calls) = always_failing(&policy, ErrorClass::Unavailable).await;
    assert_eq!(calls, 1, "threshold 1 opens at once, which stops the retries");
    assert_eq!(registry.health()[0].details["state"], "open");

    let disabled = Policy::from_config(&CircuitBreakerConfig { enabled: false, ..cfg }, &registry, names::REDIS);
    assert!(disabled.breaker().is_none());
    assert!(registry.get(names::REDIS).is_none());
    let (_, calls) = always_failing(&disabled, ErrorClass::Unavailable).await;
    assert_eq!(calls, 3);
}
