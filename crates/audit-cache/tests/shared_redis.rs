//! L1 + L2 against the machine's Redis (127.0.0.1:6379 or `REDIS_URL`), each test under its own key prefix.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use audit_core::{CacheTier, HealthState, QueryCache};
use common::*;

#[tokio::test]
async fn a_write_in_another_process_reloads_only_the_scopes_it_touches() {
    let prefix = unique_prefix("xproc");
    let cfg = config(Some(redis_url()), &prefix);
    let (a, b) = (cache(&cfg), cache(&cfg));
    let calls = AtomicUsize::new(0);
    let q1 = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 3, 1)));
    let key = r#"{"organization_id":"acme","limit":100}"#;

    let (p, tier) = query(&a, &q1, key, &calls, page("acme", "v1", 3, 10)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::Db, "v1-0"));
    let (p, tier) = query(&a, &q1, key, &calls, page("acme", "never", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::L1, "v1-0"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // B commits a February event of acme: A's next answer must be reloaded.
    b.invalidate(&[write(Some("acme"), micros(2024, 2, 10))]).await;
    let (p, tier) = query(&a, &q1, key, &calls, page("acme", "v2", 4, 10)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str(), p.events.len()), (CacheTier::Db, "v2-0", 4));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let (_, tier) = query(&a, &q1, key, &calls, page("acme", "never", 1, 0)).await.unwrap();
    assert_eq!(tier, CacheTier::L1);

    // Old periods keep hitting while the current one changes; other organisations do not disturb acme.
    let old = scope(Some("acme"), Some(micros(2023, 1, 1)), Some(micros(2023, 2, 1)));
    assert_eq!(query(&a, &old, key, &calls, page("acme", "old", 1, 0)).await.unwrap().1, CacheTier::Db);
    b.invalidate(&[write(Some("acme"), micros(2024, 2, 11)), write(Some("other"), micros(2023, 1, 5))]).await;
    assert_eq!(query(&a, &old, key, &calls, page("acme", "never", 1, 0)).await.unwrap().1, CacheTier::L1);
    assert_eq!(query(&a, &q1, key, &calls, page("acme", "v3", 1, 0)).await.unwrap().1, CacheTier::Db);

    // An open window depends on the organisation's generation: any acme write reloads it.
    let open = scope(Some("acme"), None, None);
    assert_eq!(query(&a, &open, key, &calls, page("acme", "o1", 1, 0)).await.unwrap().1, CacheTier::Db);
    b.invalidate(&[write(Some("other"), micros(1999, 1, 1))]).await;
    assert_eq!(query(&a, &open, key, &calls, page("acme", "never", 1, 0)).await.unwrap().1, CacheTier::L1);
    b.invalidate(&[write(Some("acme"), micros(1999, 1, 1))]).await;
    assert_eq!(query(&a, &open, key, &calls, page("acme", "o2", 1, 0)).await.unwrap().1, CacheTier::Db);

    // A query across organisations depends on the global generation: every write reloads it.
    let all = scope(None, Some(micros(2023, 1, 1)), Some(micros(2023, 2, 1)));
    let gkey = r#"{"limit":100}"#;
    assert_eq!(query(&a, &all, gkey, &calls, page("x", "g1", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&a, &all, gkey, &calls, page("x", "never", 1, 0)).await.unwrap().1, CacheTier::L1);
    b.invalidate(&[write(None, micros(2030, 1, 1))]).await;
    let (p, tier) = query(&a, &all, gkey, &calls, page("x", "g2", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::Db, "g2-0"));

    a.clear().await.unwrap();
}

#[tokio::test]
async fn a_fresh_instance_answers_from_l2_with_the_exact_page() {
    let prefix = unique_prefix("l2hit");
    let cfg = config(Some(redis_url()), &prefix);
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let original = page("acme", "v1", 5, 300);
    let (pa, tier) = query(&a, &s, "k", &calls, original.clone()).await.unwrap();
    assert_eq!(tier, CacheTier::Db);
    assert_eq!(*pa, original);

    let c = cache(&cfg);
    let (pc, tier) = query(&c, &s, "k", &calls, page("acme", "never", 1, 0)).await.unwrap();
    assert_eq!(tier, CacheTier::L2);
    assert_eq!(*pc, original, "L2 must give back exactly what was stored, numbers included");
    let (_, tier) = query(&c, &s, "k", &calls, page("acme", "never", 1, 0)).await.unwrap();
    assert_eq!(tier, CacheTier::L1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let st = c.stats();
    assert_eq!((st.l1_hits, st.l2_hits, st.misses), (1, 1, 0));
    assert!((st.hit_ratio - 1.0).abs() < f64::EPSILON);
    assert!(st.bytes > 0 && st.entries == 1);

    let health = c.health();
    let redis = health.iter().find(|h| h.name == "redis").expect("redis component");
    assert_eq!(redis.status, HealthState::Healthy);
    assert!(c.ping().await.is_some_and(|h| h.status == HealthState::Healthy));

    assert!(a.clear().await.unwrap() > 0);
    assert_eq!(count_keys(&redis_url(), &prefix), 0, "clear removes every key under the prefix");
    let d = cache(&cfg);
    assert_eq!(query(&d, &s, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap().1, CacheTier::Db);
    a.clear().await.unwrap();
}

#[tokio::test]
async fn answers_never_cross_organisations_or_filters() {
    let prefix = unique_prefix("tenancy");
    let cfg = config(Some(redis_url()), &prefix);
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s1 = scope(Some("org-1"), None, None);
    let s2 = scope(Some("org-2"), None, None);
    let key = r#"{"action":"read"}"#;
    let (p1, _) = query(&a, &s1, key, &calls, page("org-1", "one", 1, 0)).await.unwrap();
    let (p2, t2) = query(&a, &s2, key, &calls, page("org-2", "two", 1, 0)).await.unwrap();
    assert_eq!(t2, CacheTier::Db, "same filter text, other organisation: never served");
    assert_eq!(p1.events[0].event.organization_id.as_deref(), Some("org-1"));
    assert_eq!(p2.events[0].event.organization_id.as_deref(), Some("org-2"));
    let (p3, t3) = query(&a, &s1, r#"{"action":"write"}"#, &calls, page("org-1", "three", 1, 0)).await.unwrap();
    assert_eq!((t3, p3.events[0].event.action.as_str()), (CacheTier::Db, "three-0"));

    // Through L2 too: a fresh instance gets each organisation its own answer.
    let b = cache(&cfg);
    let (q1, t) = query(&b, &s1, key, &calls, page("x", "never", 1, 0)).await.unwrap();
    assert_eq!((t, q1.events[0].event.action.as_str()), (CacheTier::L2, "one-0"));
    let (q2, t) = query(&b, &s2, key, &calls, page("x", "never", 1, 0)).await.unwrap();
    assert_eq!((t, q2.events[0].event.action.as_str()), (CacheTier::L2, "two-0"));
    a.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_identical_misses_call_the_loader_once() {
    let prefix = unique_prefix("flight");
    let cfg = config(Some(redis_url()), &prefix);
    let a = cache(&cfg);
    let calls = Arc::new(AtomicUsize::new(0));
    let s = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (a, calls, s) = (a.clone(), calls.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            a.get_or_load(&s, "same", || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(page("acme", "once", 2, 0))
            })
            .await
        }));
    }
    let mut tiers = Vec::new();
    for t in tasks {
        let (p, tier) = t.await.unwrap().unwrap();
        assert_eq!(p.events[0].event.action, "once-0");
        tiers.push(tier);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "single flight");
    assert_eq!(tiers.iter().filter(|t| **t == CacheTier::Db).count(), 1);
    a.clear().await.unwrap();
}

#[tokio::test]
async fn entries_expire_after_their_ttl_in_both_tiers() {
    let prefix = unique_prefix("ttl");
    let mut cfg = config(Some(redis_url()), &prefix);
    cfg.default_ttl = 1;
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), None, None);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::L1);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let fresh = cache(&cfg);
    assert_eq!(query(&fresh, &s, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap().1, CacheTier::Db, "L2 expired");
    let (p, tier) = query(&a, &s, "k", &calls, page("acme", "v3", 1, 0)).await.unwrap();
    // A's L1 entry has expired; the answer that `fresh` just wrote to L2 may serve it.
    assert_ne!(tier, CacheTier::L1);
    assert_ne!(p.events[0].event.action, "v1-0");
    a.clear().await.unwrap();
}

#[tokio::test]
async fn a_disabled_cache_always_loads() {
    let mut cfg = config(Some(redis_url()), &unique_prefix("off"));
    cfg.enabled = false;
    let a = cache(&cfg);
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), None, None);
    for _ in 0..2 {
        assert_eq!(query(&a, &s, "k", &calls, page("acme", "v", 1, 0)).await.unwrap().1, CacheTier::Db);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(!a.has_l2());
}
