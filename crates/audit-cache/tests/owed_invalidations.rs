//! A writer whose generation bumps cannot reach Redis (its network to Redis cut by a proxy) while readers still
//! can: the bumps are owed, re-sent in the background, and once delivered the readers reload. Past the bound on
//! owed keys, the writer replaces every generation instead.

mod common;

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use audit_cache::{CacheOptions, TieredCache};
use audit_core::{CacheTier, ComponentHealth, HealthState, QueryCache};
use audit_testkit::proxy::{ProxyMode, TcpProxy};
use common::*;

fn redis_of(c: &TieredCache) -> ComponentHealth {
    c.health().into_iter().find(|h| h.name == "redis").expect("a redis component")
}

/// Waits until `c` owes Redis nothing.
async fn until_delivered(c: &TieredCache) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis_of(c).status != HealthState::Healthy {
        assert!(Instant::now() < deadline, "owed invalidations never reached redis: {:?}", redis_of(c));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reader on `server` and a writer reaching it through a proxy, sharing one key prefix.
async fn reader_and_writer(
    server: &RedisServer,
    options: CacheOptions,
    test: &str,
) -> (TieredCache, TieredCache, TcpProxy) {
    let proxy = TcpProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let prefix = unique_prefix(test);
    let reader = TieredCache::with_policy(&config(Some(server.url()), &prefix), options.clone(), audit_core::Direct);
    let through = format!("redis://{}", proxy.addr());
    let writer = TieredCache::with_policy(&config(Some(through), &prefix), options, audit_core::Direct);
    (reader.unwrap(), writer.unwrap(), proxy)
}

#[tokio::test]
async fn a_bump_that_missed_redis_is_re_sent_and_then_seen_by_other_processes() {
    let server = RedisServer::start().await;
    let (r, w, proxy) = reader_and_writer(&server, options(), "owed").await;
    let calls = AtomicUsize::new(0);
    let jan = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let feb = scope(Some("acme"), Some(micros(2024, 2, 1)), Some(micros(2024, 3, 1)));
    for s in [&jan, &feb] {
        assert_eq!(query(&r, s, "k", &calls, page("acme", "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    }

    proxy.set_mode(ProxyMode::Cut);
    w.invalidate(&[write(Some("acme"), micros(2024, 1, 15))]).await;
    let h = redis_of(&w);
    assert_eq!((h.status, &h.details["pending_invalidations"]), (HealthState::Degraded, &serde_json::json!(3)));
    // The documented limit: until the bump lands, a reader that still reaches Redis keeps its answer.
    assert_eq!(query(&r, &jan, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1);

    proxy.set_mode(ProxyMode::Pass);
    until_delivered(&w).await;
    let (p, tier) = query(&r, &jan, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap();
    assert_eq!(
        (tier, p.events[0].event.action.as_str()),
        (CacheTier::Db, "v2-0"),
        "the re-sent bump reached the reader"
    );
    assert_eq!(query(&r, &feb, "k", &calls, page("acme", "x", 1, 0)).await.unwrap().1, CacheTier::L1, "only January");
    r.clear().await.unwrap();
}

#[tokio::test]
async fn past_the_bound_the_writer_replaces_every_generation() {
    let server = RedisServer::start().await;
    let options = CacheOptions { max_pending_invalidations: 2, ..options() };
    let (r, w, proxy) = reader_and_writer(&server, options, "owed-all").await;
    let calls = AtomicUsize::new(0);
    let acme = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let other = scope(Some("other"), None, None);
    for (s, org) in [(&acme, "acme"), (&other, "other")] {
        assert_eq!(query(&r, s, "k", &calls, page(org, "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
    }

    proxy.set_mode(ProxyMode::Cut);
    w.invalidate(&[write(Some("acme"), micros(2024, 1, 15))]).await;
    let h = redis_of(&w);
    assert_eq!(h.details["pending_invalidations"], serde_json::json!(0), "no key is held past the bound: {h:?}");
    assert_eq!(h.details["pending_invalidate_all"], serde_json::json!(true));

    proxy.set_mode(ProxyMode::Pass);
    until_delivered(&w).await;
    // Every token was replaced: the write's organisation reloads, and so does an organisation it did not touch.
    assert_eq!(query(&r, &acme, "k", &calls, page("acme", "v2", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&r, &other, "k", &calls, page("other", "v2", 1, 0)).await.unwrap().1, CacheTier::Db);
    assert_eq!(query(&r, &other, "k", &calls, page("other", "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    r.clear().await.unwrap();
}
