//! An L2 hit costs one Redis round trip, counted on a private Redis server that nothing else uses: the server's
//! `total_reads_processed` (one read event per request that arrives, a pipeline arriving as one) and `INFO
//! commandstats` (which commands ran), read before and after each hit by an observer connection whose own `INFO`
//! is subtracted.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use audit_core::{CacheTier, QueryCache};
use common::*;

/// What the server has done so far: read events, and calls per command.
#[derive(Debug)]
struct ServerCounts {
    reads: u64,
    calls: BTreeMap<String, u64>,
}

async fn counts(c: &mut redis::aio::MultiplexedConnection) -> ServerCounts {
    let text: String = redis::cmd("INFO").arg("stats").arg("commandstats").query_async(c).await.unwrap();
    let mut reads = None;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total_reads_processed:") {
            reads = Some(v.trim().parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, stats)) = rest.split_once(':')
        {
            let n = stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).unwrap().parse().unwrap();
            calls.insert(name.to_string(), n);
        }
    }
    ServerCounts { reads: reads.expect("INFO stats has total_reads_processed (Redis ≥ 6.2)"), calls }
}

/// Commands run between `a` and `b`, the observer's `INFO` left out.
fn commands_between(a: &ServerCounts, b: &ServerCounts) -> BTreeMap<String, u64> {
    b.calls
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| (name.clone(), n - a.calls.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test]
async fn an_l2_hit_takes_one_redis_round_trip() {
    let server = RedisServer::start().await;
    let cfg = config(Some(server.url()), &unique_prefix("l2-round-trips"));
    let cache = cache(&cfg);
    let mut observer = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let calls = AtomicUsize::new(0);
    let s = scope(Some("acme"), Some(micros(2024, 1, 1)), Some(micros(2024, 2, 1)));
    let key = r#"{"organization_id":"acme","limit":100}"#;

    // A miss stores the answer in L1 and L2; a full page of realistic size.
    let (_, tier) = query(&cache, &s, key, &calls, page("acme", "v1", 100, 200)).await.unwrap();
    assert_eq!(tier, CacheTier::Db);

    // The observer's own INFO: one read event each.
    let a = counts(&mut observer).await;
    let b = counts(&mut observer).await;
    let info_reads = b.reads - a.reads;
    assert_eq!(info_reads, 1, "an idle server reads only the observer's INFO");

    let mut took = Vec::new();
    for i in 0..5 {
        cache.clear_l1();
        let before = counts(&mut observer).await;
        let t = Instant::now();
        let (p, tier) = query(&cache, &s, key, &calls, page("acme", "never", 1, 0)).await.unwrap();
        took.push(t.elapsed());
        let after = counts(&mut observer).await;
        assert_eq!((tier, p.events.len(), p.events[0].event.action.as_str()), (CacheTier::L2, 100, "v1-0"));
        let round_trips = after.reads - before.reads - info_reads;
        let commands = commands_between(&before, &after);
        assert_eq!(round_trips, 1, "hit {i}: {round_trips} round trips; commands {commands:?}");
        let want: BTreeMap<String, u64> = [("get", 1), ("mget", 1), ("pttl", 1)].map(|(c, n)| (c.into(), n)).into();
        assert_eq!(commands, want, "hit {i}: generations and value in one pipeline");
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "only the first query reached the loader");
    took.sort();
    eprintln!("L2 hits of a 100-event page: median {:?}", took[took.len() / 2]);
    assert!(took[0] < Duration::from_secs(1));
    cache.clear().await.unwrap();
}
