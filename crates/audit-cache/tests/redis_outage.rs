//! A private redis-server, killed and restarted mid-test: queries keep answering (through the loader) with no
//! error, and L2 is used again once Redis is back.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use audit_core::{CacheTier, HealthState, QueryCache};
use common::*;

#[tokio::test]
async fn redis_death_degrades_to_the_loader_and_recovery_restores_l2() {
    let server = RedisServer::start().await;
    let prefix = unique_prefix("outage");
    let mut strict = config(Some(server.url()), &prefix);
    strict.local_staleness_ms = 0;
    let mut lenient = strict.clone();
    lenient.local_staleness_ms = 600_000;
    let (a, b, l) = (cache(&strict), cache(&strict), cache(&lenient));
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));

    assert_eq!(query(&a, &s, "k", &calls, page("acme", "v1", 2, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&a, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    assert_eq!(query(&l, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L2);

    server.kill();

    // Freshness cannot be proven: A (no staleness allowed) goes to the loader, without an error.
    let before = calls.load(Ordering::SeqCst);
    let (p, tier) = query(&a, &s, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::Db, "v2-0"));
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    // L accepts answers proven fresh within its (long) staleness bound.
    assert_eq!(query(&l, &s, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    // Its own writes still reach its own L1 at once.
    l.invalidate(&[write(Some("acme"), micros(2024, 1, 20))]).await;
    assert_eq!(query(&l, &s, "k", &calls, page("acme", "v3", 1, 0)).await.unwrap().1, CacheTier::Db);
    // Writes while Redis is down do not fail; they are queued for Redis.
    b.invalidate(&[write(Some("acme"), micros(2024, 1, 21))]).await;
    let redis_of = |c: &audit_cache::TieredCache| c.health().into_iter().find(|h| h.name == "redis").unwrap();
    assert_eq!(redis_of(&a).status, HealthState::Degraded);
    assert_eq!(redis_of(&b).details["pending_invalidations"], serde_json::json!(3));

    server.restart().await;
    // Wait for B's queued invalidations to be re-sent and delivered.
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis_of(&b).details["pending_invalidations"] != serde_json::json!(0) {
        assert!(Instant::now() < deadline, "queued invalidations never reached redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The restarted Redis is empty: A loads, and writes the answer to L2; a fresh instance then hits L2.
    let (_, tier) = query(&a, &s, "k", &calls, page("acme", "v4", 1, 0)).await.unwrap();
    assert_eq!(tier, CacheTier::Db);
    let c = cache(&strict);
    let (p, tier) = query(&c, &s, "k", &calls, page("acme", "never", 1, 0)).await.unwrap();
    assert_eq!((tier, p.events[0].event.action.as_str()), (CacheTier::L2, "v4-0"));
    assert!(a.ping().await.is_some_and(|h| h.status == HealthState::Healthy));
}
