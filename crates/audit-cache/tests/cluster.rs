//! `REDIS_CLUSTER_MODE=true` against a three-node Redis Cluster started (and stopped) by the test.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use audit_core::{CacheTier, QueryCache};
use common::*;

#[tokio::test]
async fn the_cache_works_across_cluster_slots() {
    let cluster = RedisCluster::start().await;
    let prefix = unique_prefix("cluster");
    let mut cfg = config(Some(cluster.seeds()), &prefix);
    cfg.redis_cluster_mode = true;
    let (a, b) = (cache(&cfg), cache(&cfg));
    let calls = AtomicUsize::new(0);

    // Twenty organisations spread over the slots of all three nodes.
    let orgs: Vec<String> = (0..20).map(|i| format!("org-{i}")).collect();
    let s = |o: &str| scope(Some(o), Some(micros(2024, 1, 1)), Some(micros(2024, 4, 1)));
    for o in &orgs {
        assert_eq!(query(&a, &s(o), "k", &calls, page(o, "v1", 1, 0)).await.unwrap().1, CacheTier::Db);
        assert_eq!(query(&a, &s(o), "k", &calls, page(o, "x", 1, 0)).await.unwrap().1, CacheTier::L1);
    }
    let g = scope(None, None, None);
    assert_eq!(query(&a, &g, "k", &calls, page("g", "g1", 1, 0)).await.unwrap().1, CacheTier::Db);
    let fresh = cache(&cfg);
    for o in &orgs {
        let (p, tier) = query(&fresh, &s(o), "k", &calls, page(o, "x", 1, 0)).await.unwrap();
        assert_eq!((tier, p.events[0].event.organization_id.as_deref()), (CacheTier::L2, Some(o.as_str())));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 21);

    // One batch touching half of the organisations (several slots) reloads exactly those, and the global query.
    let writes: Vec<_> = orgs.iter().step_by(2).map(|o| write(Some(o), micros(2024, 2, 2))).collect();
    b.invalidate(&writes).await;
    for (i, o) in orgs.iter().enumerate() {
        let expect = if i % 2 == 0 { CacheTier::Db } else { CacheTier::L1 };
        assert_eq!(query(&a, &s(o), "k", &calls, page(o, "v2", 1, 0)).await.unwrap().1, expect, "{o}");
    }
    assert_eq!(query(&a, &g, "k", &calls, page("g", "g2", 1, 0)).await.unwrap().1, CacheTier::Db);

    // `clear` counts the L1 entries it drops too: the Redis keys are what is beyond them.
    let held = a.stats().entries;
    let removed = a.clear().await.unwrap();
    assert!(removed >= held + 20, "clear scans every primary ({removed} removed, {held} of them L1 entries)");
    for n in cluster.nodes() {
        assert_eq!(count_keys(&n.url(), &prefix), 0);
    }
}
