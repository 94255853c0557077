//! L1 without Redis: local staleness, read-your-writes in the process, single flight, and the memory bound.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use audit_core::{CacheTier, QueryCache};
use common::*;
use proptest::prelude::*;

#[tokio::test(start_paused = true)]
async fn without_redis_answers_older_than_the_staleness_bound_are_not_served() {
    let mut cfg = config(None, "p:");
    cfg.local_staleness_ms = 300;
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), None, None);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    tokio::time::advance(Duration::from_millis(250)).await;
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1, "within the bound");
    tokio::time::advance(Duration::from_millis(150)).await;
    let (p, tier) = query(&a, &s, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::Db, "v2-0"));
    assert_eq!(a.health().len(), 1, "no redis component without redis");
}

#[tokio::test]
async fn without_redis_a_process_sees_its_own_writes_at_once() {
    let mut cfg = config(None, "p:");
    cfg.local_staleness_ms = 600_000;
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let jan = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let feb = scope(Some("acme"), Some(micros(2024, 2, 1)), Some(micros(2024, 3, 1)));
    for s in [&jan, &feb] {
        assert_eq!(query(&a, s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    }
    a.invalidate(&[write(Some("acme"), micros(2024, 1, 9))]).await;
    assert_eq!(query(&a, &jan, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&a, &feb, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    a.clear_l1();
    assert_eq!(a.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn without_redis_entries_expire_after_their_ttl() {
    let mut cfg = config(None, "p:");
    cfg.default_ttl = 2;
    cfg.local_staleness_ms = 600_000;
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), None, None);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    tokio::time::advance(Duration::from_millis(1_990)).await;
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    tokio::time::advance(Duration::from_millis(20)).await;
    let (p, tier) = query(&a, &s, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::Db, "v2-0"), "expired after defaultTTL");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Ten tasks miss the same slot while the loader waits (on paused time: the wait costs nothing real).
#[tokio::test(start_paused = true)]
async fn single_flight_without_redis() {
    let a = cache(&config(None, "p:"));
    let calls = Arc::new(AtomicUsize::new(0));
    let s = scope(None, None, None);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (a, calls, s) = (a.clone(), calls.clone(), s.clone());
            tokio::spawn(async move {
                a.get_or_load(&s, "k", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(page("x", "once", 1, 0))
                })
                .await
                .map(|(p, _)| p.events[0].event.action.clone())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "once-0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_loader_is_reported_and_not_cached() {
    let a = cache(&config(None, "p:"));
    let s = scope(None, None, None);
    let err = a.get_or_load(&s, "k", || async { Err(audit_core::AuditError::unavailable("db down")) }).await;
    assert_eq!(err.unwrap_err().message(), "db down");
    let calls = AtomicUsize::new(0);
    assert_eq!(query(&a, &s, "k", &calls, page("x", "v", 1, 0)).await.unwrap().1, CacheTier::Db);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the entry sizes, L1 never holds more than its byte budget or more than `maxKeys` entries, and
    /// every answer is the loader's.
    #[test]
    fn l1_stays_within_bytes_and_keys(
        sizes in proptest::collection::vec((0usize..6, 0usize..200_000), 1..60),
        max_keys in 3u64..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut cfg = config(None, "p:");
            cfg.max_size_mb = 1;
            cfg.max_keys = max_keys;
            cfg.local_staleness_ms = 600_000;
            let a = cache(&cfg);
            let budget = a.l1_budget_bytes();
            assert!(budget <= 1 << 20);
            let calls = AtomicUsize::new(0);
            for (i, (events, details)) in sizes.iter().enumerate() {
                let s = scope(Some("acme"), Some(i as i64), Some(i as i64 + 1));
                let want = page("acme", &format!("e{i}"), *events, *details);
                let (got, tier) = query(&a, &s, "k", &calls, want.clone()).await.unwrap();
                assert_eq!(tier, CacheTier::Db);
                assert_eq!(*got, want);
                let st = a.stats();
                assert!(st.bytes <= budget, "{} bytes held, budget {budget}", st.bytes);
                assert!(st.entries <= max_keys, "{} entries, max {max_keys}", st.entries);
            }
            let total: usize = sizes.iter().map(|(e, d)| e * d).sum();
            if total > 4 << 20 {
                assert!(a.stats().evictions > 0 || a.stats().entries < sizes.len() as u64);
            }
        });
    }
}
