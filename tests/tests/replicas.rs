//! Read replicas end to end, on a real primary and two real streaming replicas (pg_basebackup), through
//! audit-client's public API with audit-replica's router: reads spread by each strategy (counted per replica);
//! read-your-writes sees every insert at once with replicas that apply WAL seconds late, while `eventual` reads
//! there miss them (and the replica is shown to be behind); no read goes to a replica that lags past its bound, is
//! stopped (no read fails meanwhile; it comes back when restarted) or was promoted; with falling back off, the
//! error names each replica's state.
//!
//! One set of three clusters serves every scenario (they run in sequence, each leaving the replicas healthy for the
//! next, the promotion last).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use audit_client::{Ack, AuditClient, ClientConfig, Consistency, ReadRoute};
use audit_core::{Direct, ErrorKind, EventFilter, HealthState, NoCache, ReadRouter as _, Routed};
use audit_partition::{PartitionConfig, PartitionManager};
use audit_pg::DatabaseConfig;
use audit_replica::{Exclusion, ReplicaEndpoint, ReplicaRouter, RouterConfig, Strategy};
use audit_testkit::cluster::{TestCluster, start_private_cluster};
use audit_testkit::replication::{SlowProxy, pause_replay, replay_lsn, set_apply_delay};
use audit_testkit::{proxy::server_addr, wait_for};
use serde_json::json;
use uuid::Uuid;

mod support;

type Router = ReplicaRouter<Direct>;
type Client = AuditClient<PartitionManager, NoCache, Direct, Router>;

/// The servers of this file.
struct Servers {
    primary: TestCluster,
    a: TestCluster,
    b: TestCluster,
    /// 20 ms in front of every answer of replica `b` (a slower replica for the latency-aware strategies).
    slow_b: SlowProxy,
}

/// How a scenario's router looks at the replicas.
struct Setup {
    strategy: Strategy,
    /// `b` through the slow proxy.
    slow_b: bool,
    max_lag_ms: u64,
    fallback: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self { strategy: Strategy::RoundRobin, slow_b: false, max_lag_ms: 60_000, fallback: true }
    }
}

impl Servers {
    async fn router(&self, setup: &Setup) -> Router {
        let config = RouterConfig {
            strategy: setup.strategy,
            health_check_interval: 200,
            fallback_to_master: setup.fallback,
            max_lag_ms: setup.max_lag_ms,
            read_your_writes_wait_ms: 50,
        };
        let b_url = if setup.slow_b { self.slow_b.url_for(&self.b.url()) } else { self.b.url() };
        let endpoint = |id: &str, url: String, weight: u32| ReplicaEndpoint {
            id: id.to_string(),
            url,
            weight,
            max_lag_ms: None,
            max_lag_bytes: None,
        };
        let replicas = vec![(endpoint("a", self.a.url(), 3), Direct), (endpoint("b", b_url, 1), Direct)];
        ReplicaRouter::start(config, &DatabaseConfig::default(), support::connector(&self.primary.url()), replicas)
            .await
            .expect("router starts")
    }

    async fn client(&self, setup: &Setup) -> Client {
        let url = self.primary.url();
        let pm = support::partitions(&url, PartitionConfig::default()).await;
        let router = self.router(setup).await;
        AuditClient::connect_with_router(ClientConfig::default(), &url, pm, NoCache, Direct, router)
            .await
            .expect("client connects")
    }
}

fn event(org: &str, tag: &str) -> serde_json::Value {
    json!({"action": tag, "status": "success", "organization_id": org, "principal_id": "u1",
           "event_id": Uuid::new_v4().to_string(), "timestamp": now()})
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn by_id(id: Uuid) -> EventFilter {
    EventFilter { event_id: Some(id), ..EventFilter::default() }
}

fn org(o: &str) -> EventFilter {
    EventFilter { organization_id: Some(o.to_string()), limit: Some(20), ..EventFilter::default() }
}

/// Reads served per replica (a, b) so far.
fn served(c: &Client) -> (u64, u64) {
    let s = c.router().status();
    (s.replicas[0].served, s.replicas[1].served)
}

fn excluded(c: &Client, i: usize) -> Option<Exclusion> {
    c.router().status().replicas[i].excluded.clone()
}

async fn wait_excluded(c: &Client, i: usize, what: &str, pred: impl Fn(&Option<Exclusion>) -> bool) {
    wait_for(what, Duration::from_secs(20), || {
        let ok = pred(&excluded(c, i));
        async move { ok }
    })
    .await;
}

fn stored_lsn(ack: &Ack) -> u64 {
    ack.commit_lsn().expect("a committed insert carries its commit position").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_reads_by_strategy_consistency_and_health() {
    let primary = start_private_cluster().await.expect("primary");
    support::migrate(&primary.url()).await;
    support::partitions(&primary.url(), PartitionConfig::default()).await.premake().await.expect("premake");
    let a = primary.create_replica().await.expect("replica a");
    let b = primary.create_replica().await.expect("replica b");
    let slow_b = SlowProxy::start(server_addr(&b.url()).await, Duration::from_millis(20)).await;
    let servers = Servers { primary, a, b, slow_b };

    // Something to read.
    let seed = servers.client(&Setup::default()).await;
    for i in 0..50 {
        seed.insert(event("o1", &format!("seed_{i}"))).await.unwrap();
    }

    strategies_spread_reads(&servers).await;
    read_your_writes_with_delayed_replicas(&servers).await;
    lagging_replica_is_skipped_until_it_catches_up(&servers).await;
    stopped_replica_fails_no_read_and_returns(&servers).await;
    promoted_replica_is_excluded_and_no_fallback_names_every_state(&servers).await;
}

async fn strategies_spread_reads(s: &Servers) {
    let f = org("o1");
    // Round robin: exact turns, slow or not.
    let c = s.client(&Setup { slow_b: true, ..Setup::default() }).await;
    for _ in 0..100 {
        let a = c.query_with(&f, Consistency::Eventual).await.unwrap();
        assert!(matches!(a.route, ReadRoute::Replica(_)), "{:?}", a.route);
        assert_eq!(a.page.events.len(), 20);
    }
    assert_eq!(served(&c), (50, 50), "round_robin");

    // Weighted 3:1: exact shares.
    let c = s.client(&Setup { strategy: Strategy::Weighted, ..Setup::default() }).await;
    for _ in 0..100 {
        c.count_with(&f, Consistency::Eventual).await.unwrap();
    }
    assert_eq!(served(&c), (75, 25), "weighted");

    // Random: both used.
    let c = s.client(&Setup { strategy: Strategy::Random, ..Setup::default() }).await;
    for _ in 0..100 {
        c.query_with(&f, Consistency::Eventual).await.unwrap();
    }
    let (ra, rb) = served(&c);
    assert_eq!(ra + rb, 100);
    assert!(ra >= 20 && rb >= 20, "random: {ra}/{rb}");

    // Least latency: the replica behind a 20 ms delay is (almost) never chosen.
    let c = s.client(&Setup { strategy: Strategy::LeastLatency, slow_b: true, ..Setup::default() }).await;
    for _ in 0..60 {
        c.query_with(&f, Consistency::Eventual).await.unwrap();
    }
    let (la, lb) = served(&c);
    assert!(la >= 55 && la + lb == 60, "least_latency: {la}/{lb}");
    let st = c.router().status();
    assert!(st.replicas[0].latency_ms.unwrap() < st.replicas[1].latency_ms.unwrap(), "{st:?}");

    // Least connections under concurrency: the slow replica keeps reads in flight longer, so it gets fewer.
    let c = s.client(&Setup { strategy: Strategy::LeastConnections, slow_b: true, ..Setup::default() }).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, f) = (c.clone(), f.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    c.query_with(&f, Consistency::Eventual).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (ca, cb) = served(&c);
    assert_eq!(ca + cb, 160);
    assert!(cb >= 1 && ca > 3 * cb, "least_connections: {ca}/{cb}");
}

async fn read_your_writes_with_delayed_replicas(s: &Servers) {
    let c = s.client(&Setup::default()).await;

    // Replicas in step: read-your-writes reads are served by replicas once they have replayed the insert.
    let mut on_replica = 0;
    for i in 0..100 {
        let ack = c.insert(event("ryw", &format!("fresh_{i}"))).await.unwrap();
        let a = c.query(&by_id(ack.event_id())).await.unwrap();
        assert_eq!(a.page.events.len(), 1, "round trip {i}: the insert is seen (route {})", a.route);
        on_replica += usize::from(matches!(a.route, ReadRoute::Replica(_)));
    }
    assert!(on_replica >= 50, "replicas in step serve most read-your-writes reads ({on_replica}/100)");

    // Replicas that apply WAL 3 s late: read-your-writes still sees every insert (the primary answers).
    set_apply_delay(&s.a.url(), Duration::from_secs(3)).await;
    set_apply_delay(&s.b.url(), Duration::from_secs(3)).await;
    for i in 0..100 {
        let ack = c.insert(event("ryw", &format!("delayed_{i}"))).await.unwrap();
        let a = c.query(&by_id(ack.event_id())).await.unwrap();
        assert_eq!(a.page.events.len(), 1, "round trip {i}: the insert is seen (route {})", a.route);
        let n = c.count(&by_id(ack.event_id())).await.unwrap();
        assert_eq!(n, 1, "round trip {i}: count sees it too");
        assert!(c.get(ack.event_id()).await.unwrap().is_some(), "round trip {i}: get sees it too");
    }
    // An explicit position from another writer counts too (what `query --min-lsn` and the HTTP header carry).
    let other = s.client(&Setup::default()).await;
    let ack = other.insert(event("ryw", "other_writer")).await.unwrap();
    let got = c.query_with(&by_id(ack.event_id()), Consistency::ReadYourWrites(ack.commit_lsn())).await.unwrap();
    assert_eq!(got.page.events.len(), 1, "a position handed over from another client is honoured");

    // `eventual` reads go to the late replicas and miss the fresh insert — because the replica really is behind.
    let mut misses = 0;
    for i in 0..20 {
        let ack = c.insert(event("ryw", &format!("eventual_{i}"))).await.unwrap();
        let a = c.query_with(&by_id(ack.event_id()), Consistency::Eventual).await.unwrap();
        let ReadRoute::Replica(id) = &a.route else {
            panic!("eventual read {i} was not served by a replica: {}", a.route)
        };
        if a.page.events.is_empty() {
            misses += 1;
            let url = if &**id == "a" { s.a.url() } else { s.b.url() };
            let replayed = replay_lsn(&url).await;
            assert!(replayed < stored_lsn(&ack), "replica {id} missed the event although it had replayed its commit");
        }
    }
    assert!(misses > 0, "with replicas 3 s late, eventual reads right after an insert miss it");

    // Bounded staleness: a bound below the lag goes to the primary, one above it to a replica.
    let tight = c.query_with(&org("ryw"), Consistency::BoundedStaleness(Duration::from_millis(500))).await.unwrap();
    assert_eq!(tight.route, ReadRoute::Primary);
    let loose = c.query_with(&org("ryw"), Consistency::BoundedStaleness(Duration::from_secs(30))).await.unwrap();
    assert!(matches!(loose.route, ReadRoute::Replica(_)), "{}", loose.route);
    // Strong always reads the primary (through the cache path).
    assert_eq!(c.query_with(&org("ryw"), Consistency::Strong).await.unwrap().route, ReadRoute::Primary);

    set_apply_delay(&s.a.url(), Duration::ZERO).await;
    set_apply_delay(&s.b.url(), Duration::ZERO).await;
}

async fn lagging_replica_is_skipped_until_it_catches_up(s: &Servers) {
    let c = s.client(&Setup { max_lag_ms: 1_000, ..Setup::default() }).await;
    pause_replay(&s.a.url(), true).await;
    let writer = c.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writes = tokio::spawn(async move {
        while !stop_writer.load(Ordering::Relaxed) {
            writer.insert(event("lag", "tick")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    wait_excluded(&c, 0, "replica a to be excluded as lagging", |e| matches!(e, Some(Exclusion::Lagging { .. }))).await;
    let lag = c.router().status().replicas[0].clone();
    assert!(lag.lag_bytes.unwrap() > 0 && lag.lag_seconds.unwrap() > 1.0, "{lag:?}");
    let (a0, b0) = served(&c);
    for _ in 0..40 {
        c.query_with(&org("o1"), Consistency::Eventual).await.unwrap();
    }
    assert_eq!(served(&c), (a0, b0 + 40), "no read goes to the lagging replica");
    let health = c.health().await;
    assert_eq!(health.components["replica:a"].status, HealthState::Degraded);
    assert_eq!(health.overall, HealthState::Degraded);

    pause_replay(&s.a.url(), false).await;
    wait_excluded(&c, 0, "replica a back in rotation", Option::is_none).await;
    for _ in 0..20 {
        c.query_with(&org("o1"), Consistency::Eventual).await.unwrap();
    }
    assert!(served(&c).0 > a0, "the replica serves again once it has caught up");
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
}

async fn stopped_replica_fails_no_read_and_returns(s: &Servers) {
    let c = s.client(&Setup::default()).await;
    let reads = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(4);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, reads) = (c.clone(), reads.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let r = c.query_with(&org("o1"), Consistency::Eventual).await;
                    assert_eq!(r.expect("no read fails while a replica stops").page.events.len(), 20);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.b.stop().await.expect("stopping replica b");
    for t in tasks {
        t.await.expect("reader task");
    }
    assert!(reads.load(Ordering::Relaxed) > 100, "the load kept going");
    wait_excluded(&c, 1, "replica b to be seen down", |e| matches!(e, Some(Exclusion::Down { .. }))).await;
    let (_, b_down) = served(&c);
    for _ in 0..20 {
        c.query_with(&org("o1"), Consistency::Eventual).await.unwrap();
    }
    assert_eq!(served(&c).1, b_down, "no read goes to the stopped replica");
    assert_eq!(c.health().await.components["replica:b"].status, HealthState::Unhealthy);

    s.b.start().await.expect("restarting replica b");
    wait_excluded(&c, 1, "replica b back in rotation", Option::is_none).await;
    // Back in rotation: within a few health intervals it serves its turns again (a read that meets one of its
    // connections from before the restart may first take it out until the next probe).
    let back = Instant::now();
    while served(&c).1 == b_down && back.elapsed() < Duration::from_secs(5) {
        c.query_with(&org("o1"), Consistency::Eventual).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served(&c).1 > b_down, "the restarted replica serves again: {:#?}", c.router().status());
}

async fn promoted_replica_is_excluded_and_no_fallback_names_every_state(s: &Servers) {
    let c = s.client(&Setup::default()).await;
    s.a.promote().await.expect("promoting replica a");
    wait_excluded(&c, 0, "replica a to be seen promoted", |e| matches!(e, Some(Exclusion::Promoted))).await;
    let (a0, _) = served(&c);
    for _ in 0..20 {
        c.query_with(&org("o1"), Consistency::Eventual).await.unwrap();
    }
    assert_eq!(served(&c).0, a0, "no read goes to the promoted replica");

    // With b stopped too and falling back off, a read fails naming each replica's state.
    s.b.stop().await.expect("stopping replica b");
    let strict = s.client(&Setup { fallback: false, ..Setup::default() }).await;
    let err = strict.query_with(&org("o1"), Consistency::Eventual).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a: promoted") && msg.contains("b: down"), "{msg}");
    assert!(msg.contains("fallbackToMaster"), "{msg}");
    // The router on its own (the seed's `router.route(fn)`) says the same.
    let routed = strict.router().read(Consistency::Eventual, |_conn| async { Ok(()) }).await;
    assert!(matches!(routed, Err(e) if e.kind() == ErrorKind::Unavailable));
    // Strong reads never needed a replica.
    assert_eq!(strict.query_with(&org("o1"), Consistency::Strong).await.unwrap().route, ReadRoute::Primary);
    // With falling back on, the same read is answered by the primary.
    assert!(matches!(c.router().route(|_conn| async { Ok(1) }).await.unwrap(), Routed::Primary));
    assert_eq!(c.query_with(&org("o1"), Consistency::Eventual).await.unwrap().route, ReadRoute::Primary);
}
