//! What users see when dependencies fail, against real processes: the `audit-db` binary facing a blackholed
//! database and a database restarted in the middle of a large ingest; and clients wired like the binary wires them
//! (`App::client`: audit-resilience `Policy` per dependency, `TieredCache` with a breaker around Redis) facing a
//! lost COMMIT, a silent network, a dead Redis and a stopped database.
//!
//! Every process a test starts (PostgreSQL clusters, redis-server, the binary) is stopped when the test ends, also
//! when it fails.

use audit_testkit::proxy;
use audit_testkit::proxy::{server_addr, through};
use audit_testkit::wait_for;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use audit_cache::{CacheOptions, TieredCache};
use audit_client::{Ack, AuditClient, BatchItem};
use audit_core::{CacheTier, ErrorClass, EventFilter, HealthState, NoCache, RetrySchedule};
use audit_partition::PartitionManager;
use audit_pg::Connector;
use audit_resilience::{BreakerState, Policy, names};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_testkit::cluster::start_private_cluster;
use audit_testkit::redis::RedisServer;
use audit_testkit::{TestDb, assert_exactly_once_and_gap_free, sql};
use chrono::{SecondsFormat, Utc};
use proxy::{ProxyMode, TcpProxy};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;

type PolicyClient = AuditClient<PartitionManager, NoCache, Policy>;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// `n` events over seven organisations, every other one without an `event_id` (the client assigns one).
fn events(n: usize, tag: &str) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut e = json!({
                "action": format!("{tag}_{}", i % 4), "status": if i % 9 == 0 { "failure" } else { "success" },
                "organization_id": format!("org{}", i % 7), "principal_id": format!("u{}", i % 1000),
                "timestamp": (now - chrono::Duration::milliseconds(i as i64 * 5)).to_rfc3339_opts(SecondsFormat::Micros, true),
                "details": {"i": i, "channel": "web"}
            });
            if i % 2 == 0 {
                e["event_id"] = json!(Uuid::new_v4().to_string());
            }
            e
        })
        .collect()
}

/// The binary's wiring ([`App`]: configuration, breakers, policies) for the primary at `url`.
async fn open_app(url: &str, mut config: AuditConfig) -> App {
    config.database.url = Some(url.to_string());
    App::open(config).await.expect("the app opens")
}

/// Migrates and premakes partitions directly on `db_url`, then connects a client to `client_url` (possibly a
/// proxy) with the primary `Policy` the binary uses (`App::database_policy`; its breakers are `app.breakers()`).
async fn policy_client(db_url: &str, client_url: &str, config: AuditConfig) -> (App, PolicyClient) {
    let direct = Connector::new(db_url, config.database.connect_options(names::PRIMARY)).expect("a valid test URL");
    audit_pg::run_migrations(&direct).await.expect("migrations apply");
    let pm = PartitionManager::connect(&direct, config.partition.clone()).await.expect("partition manager");
    pm.premake().await.expect("premake");
    let app = open_app(client_url, config).await;
    let client = AuditClient::connect(app.client_config(), &app.url, pm, NoCache, app.database_policy())
        .await
        .expect("client connects");
    (app, client)
}

/// The binary, run asynchronously (the test's runtime keeps serving proxies meanwhile); killed if the test ends
/// first.
fn audit_db(args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut c = cli::async_command(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_database_fails_within_connect_timeout_times_attempts() {
    // The port accepts connections and never answers: only the connect timeout can end each attempt.
    let proxy = TcpProxy::start("127.0.0.1:9".parse().unwrap()).await;
    proxy.set_mode(ProxyMode::Blackhole);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("audit-db.toml");
    std::fs::write(&config, "[database]\nconnectionTimeout = 800\nmaxConnectionAttempts = 2\n").unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/test", proxy.addr().port());
    let (connect_timeout, attempts) = (Duration::from_millis(800), 2u32);

    let started = Instant::now();
    let run =
        audit_db(&["--config", config.to_str().unwrap(), "query", "--org", "x"], &[("DATABASE_URL", &url)]).output();
    let o = tokio::time::timeout(Duration::from_secs(60), run).await.expect("audit-db must not hang").unwrap();
    let elapsed = started.elapsed();
    let err = text(&o.stderr);
    println!("blackholed database: exit {:?} after {} ms: {}", o.status.code(), elapsed.as_millis(), err.trim());

    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", proxy.addr().port())), "names host and port: {err}");
    assert!(err.contains("after 2 attempts"), "names the number of attempts: {err}");
    assert!(err.contains("800 ms"), "says which limit ended each attempt: {err}");
    // connectTimeout × attempts plus the short pauses between attempts; the slack is for a loaded machine.
    let bound = connect_timeout * attempts + Duration::from_secs(10);
    assert!(elapsed < bound, "gave up after {elapsed:?}, bound {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_waits_out_a_database_restart_and_stores_every_event_once() {
    const N: usize = 100_000;
    let cluster = start_private_cluster().await.expect("a private cluster");
    let url = cluster.url();
    let env = [("DATABASE_URL", url.as_str())];
    let m =
        tokio::time::timeout(Duration::from_secs(60), audit_db(&["migrate"], &env).output()).await.unwrap().unwrap();
    assert!(m.status.success(), "migrate: {}", text(&m.stderr));

    let dir = tempfile::tempdir().unwrap();
    let file = cli::write_lines(dir.path(), "events.ndjson", &events(N, "restart"));
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = audit_db(&["ingest", file.to_str().unwrap()], &env)
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .expect("audit-db starts");
    let started = Instant::now();

    // Once some rows are in, stop the database (fast shutdown: sessions are terminated), keep it down, restart.
    let pg = sql(&url).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let at_stop = loop {
        let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "no row was committed within 40 s");
        assert!(child.try_wait().unwrap().is_none(), "the ingest ended before storing anything");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(pg);
    cluster.stop().await.expect("stop the cluster");
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(child.try_wait().unwrap().is_none(), "the ingest must wait for the database, not give up");
    cluster.start().await.expect("start the cluster again");
    let restarted_at = started.elapsed();

    let status = tokio::time::timeout(Duration::from_secs(45), child.wait())
        .await
        .expect("the ingest finishes after the restart")
        .unwrap();
    let (out, err) = (std::fs::read_to_string(&out_path).unwrap(), std::fs::read_to_string(&err_path).unwrap());
    println!(
        "ingest of {N}: {at_stop} rows in when stopped at {:.1} s, restarted at {:.1} s, done at {:.1} s, exit {:?}",
        stopped_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        status.code()
    );
    for l in
        err.lines().filter(|l| l.contains("unavailable") || l.contains("available again") || l.contains("ingested"))
    {
        println!("  stderr: {l}");
    }
    assert!(at_stop < N as i64, "the ingest finished before the database was stopped; nothing was tested");
    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(cli::counts(&summary), json!({"accepted": N, "rejected": 0, "duplicates": 0}), "stderr:\n{err}");
    assert!(summary["commit_lsn"].is_string(), "{summary}");
    // The words of the client's and the breaker's messages about an unavailable database.
    let pause_lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("line ") && ["unavailable", "waiting", "retrying"].iter().any(|w| l.contains(w)))
        .collect();
    assert!(!pause_lines.is_empty(), "the progress output (stderr) must show the pause:\n{err}");
    let pg = sql(&url).await;
    assert_exactly_once_and_gap_free(&pg, N as i64).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Clients wired like the binary
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_under_the_retry_policy_is_stored_once_and_acknowledged_stored() {
    let db = TestDb::create("res_policy_commit").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let (app, client) = policy_client(&db.url, &through(&db.url, &proxy), AuditConfig::default()).await;

    // Bulk path (one COPY transaction per chunk).
    proxy.cut_next_commits(1);
    let report = client.insert_batch(events(800, "policy")).await.expect("stored despite the lost COMMIT");
    assert_eq!(proxy.commits_cut(), 1, "the COMMIT was forwarded and its answer never delivered");
    assert_eq!((report.accepted(), report.duplicates(), report.rejected()), (800, 0, 0));
    let mut acks: Vec<Ack> = report
        .items
        .into_iter()
        .map(|i| match i {
            BatchItem::Ok(a) => a,
            BatchItem::Rejected(r) => panic!("rejected: {r}"),
        })
        .collect();

    // Atomic transaction: the policy retries the whole transaction, which finds its own rows.
    proxy.cut_next_commits(1);
    let mut tx = client.begin();
    for e in events(30, "policy_tx") {
        tx.insert(e).unwrap();
    }
    acks.extend(tx.commit().await.expect("the transaction is retried and acknowledged"));
    assert_eq!(proxy.commits_cut(), 2);

    let pg = sql(&db.url).await;
    assert_exactly_once_and_gap_free(&pg, 830).await;
    let rows = pg.query("SELECT event_id, id, seq FROM audit_log", &[]).await.unwrap();
    let stored: HashMap<Uuid, (i64, i64)> = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    for a in &acks {
        match a {
            Ack::Stored { event_id, id, seq, .. } => assert_eq!(stored.get(event_id), Some(&(*id, *seq)), "{event_id}"),
            Ack::Duplicate { event_id, .. } => panic!("{event_id} reported as a duplicate after a lost COMMIT"),
        }
    }
    let primary = app.breakers().get(names::PRIMARY).expect("the primary breaker exists");
    assert_eq!(primary.state(), BreakerState::Closed, "one lost connection must not open the breaker");
}

/// Settings for the silent-network tests: short connect and query timeouts, two attempts per call.
fn short_timeouts() -> AuditConfig {
    let mut config = AuditConfig::default();
    config.database.connection_timeout = 500;
    config.database.query_timeout = 1_000;
    config.circuit_breaker.retry_attempts = 2;
    config.circuit_breaker.timeout_ms = 20_000;
    config
}

/// Runs `filter` against a blackholed database and checks the Unavailable error comes within attempts × the
/// per-attempt timeout (`connectionTimeout + queryTimeout`) plus the first retry delay, with slack for load.
async fn assert_unavailable_within_attempt_bound(client: &PolicyClient, config: &AuditConfig, filter: &EventFilter) {
    let per_attempt = Duration::from_millis(config.database.connection_timeout + config.database.query_timeout);
    let bound =
        per_attempt * config.circuit_breaker.retry_attempts + config.circuit_breaker.retry_schedule().delay_ceiling(1);
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), client.query(filter)).await;
    let elapsed = started.elapsed();
    let err = match outcome {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => panic!("a blackholed database answered"),
        Err(_) => panic!("the query hung on a silent network"),
    };
    println!("blackholed query failed after {} ms (bound {} ms): {err}", elapsed.as_millis(), bound.as_millis());
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err:?}");
    assert_eq!(err.component(), Some(names::PRIMARY), "{err:?}");
    assert!(elapsed < bound + Duration::from_secs(5), "took {elapsed:?}; bound {bound:?} (+5 s slack for load)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_connection_ends_in_an_unavailable_error_within_the_attempt_bound() {
    let db = TestDb::create("res_blackhole").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let config = short_timeouts();
    let (_app, client) = policy_client(&db.url, &through(&db.url, &proxy), config.clone()).await;
    assert_eq!(client.insert_batch(events(20, "bh")).await.unwrap().accepted(), 20);
    let filter = EventFilter { organization_id: Some("org1".into()), ..EventFilter::default() };
    assert_eq!(client.query(&filter).await.expect("answers while the network passes").page.events.len(), 3);

    // The pooled connection and any new one go silent.
    proxy.set_mode(ProxyMode::Blackhole);
    let other = EventFilter { organization_id: Some("org2".into()), ..EventFilter::default() };
    assert_unavailable_within_attempt_bound(&client, &config, &other).await;

    // The network heals: what the open connections sent meanwhile arrives late, nothing is lost.
    proxy.set_mode(ProxyMode::Pass);
    let (c, f) = (&client, &other);
    wait_for("answers again once the network passes", Duration::from_secs(30), || async move {
        c.query(f).await.is_ok_and(|a| a.page.events.len() == 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_attempt_that_is_never_answered_does_not_wedge_the_read_pool() {
    // A peer that accepts TCP and then never answers the startup (a hung server, a pooler or load balancer
    // waiting for a dead backend) must cost one connect timeout, not the read pool: `connectionTimeout` bounds
    // establishing a connection, and later queries open new connections.
    let db = TestDb::create("res_silent_connect").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let mut config = short_timeouts();
    // This test is about the read pool, not the breaker: on a loaded machine the failures of the blackhole phase
    // reached the breaker's threshold, and the open breaker (rightly) refused the first write after the network
    // came back for its whole open period. The breaker has its own tests above.
    config.circuit_breaker.failure_threshold = 1_000;
    let (_app, client) = policy_client(&db.url, &through(&db.url, &proxy), config.clone()).await;
    assert_eq!(client.insert_batch(events(20, "silent")).await.unwrap().accepted(), 20);

    // The read pool has no connection yet: its first one is opened into the blackhole and never answered.
    proxy.set_mode(ProxyMode::Blackhole);
    let filter = EventFilter { organization_id: Some("org1".into()), ..EventFilter::default() };
    assert_unavailable_within_attempt_bound(&client, &config, &filter).await;

    // New connections pass again (and the write pool's open connection, whose bytes were held, works again); the
    // silent connection attempt stays silent (it never reaches the server).
    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(client.insert_batch(events(7, "silent_after")).await.unwrap().accepted(), 7, "writes work again");
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let r = client.query(&filter).await;
        if r.as_ref().is_ok_and(|a| a.page.events.len() == 4) || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match last {
        Ok(a) => assert_eq!(a.page.events.len(), 4),
        Err(e) => panic!(
            "reads still fail 20 s after the network came back although writes work (a read-pool connection \
             attempt without a timeout holds the pool's only slot for a waiter): {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_fast_and_the_client_recovers_when_the_database_returns() {
    let cluster = start_private_cluster().await.expect("a private cluster");
    let url = cluster.url();
    let mut config = AuditConfig::default();
    config.database.connection_timeout = 1_000;
    config.database.query_timeout = 2_000;
    config.circuit_breaker.failure_threshold = 3;
    config.circuit_breaker.reset_timeout_ms = 2_000;
    config.circuit_breaker.retry_attempts = 2;
    let (app, client) = policy_client(&url, &url, config).await;
    assert_eq!(client.insert_batch(events(70, "breaker")).await.unwrap().accepted(), 70);
    let filter = EventFilter { organization_id: Some("org3".into()), ..EventFilter::default() };
    assert_eq!(client.count(&filter).await.unwrap(), 10);
    let primary = app.breakers().get(names::PRIMARY).expect("the primary breaker exists");

    cluster.stop().await.expect("stop the cluster");
    let down_at = Instant::now();
    while primary.state() != BreakerState::Open {
        assert!(down_at.elapsed() < Duration::from_secs(40), "the primary breaker did not open within 40 s");
        let r = client.count(&filter).await;
        assert!(r.is_err(), "a stopped database answered");
    }
    let opened_after = down_at.elapsed();

    let started = Instant::now();
    let err = client.count(&filter).await.expect_err("the breaker is open");
    let fail_fast = started.elapsed();
    assert!(err.is_circuit_open(), "refused by the breaker, without calling the database: {err:?}");
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(primary.state(), BreakerState::Open);
    let report = client.health().await;
    assert_eq!(report.overall, HealthState::Unhealthy);
    // The health check itself waits for a connection, so the open period may have ended by the time it returns.
    let state = &report.components["breaker:primary"].details["state"];
    assert!(state == "open" || state == "half_open", "the health report shows the breaker: {state}");

    cluster.start().await.expect("start the cluster again");
    let up_at = Instant::now();
    let (c, f) = (&client, &filter);
    wait_for("the client to answer again", Duration::from_secs(40), || async move {
        c.count(f).await.is_ok_and(|n| n == 10)
    })
    .await;
    let recovered = up_at.elapsed();
    println!(
        "breaker opened {} ms after the stop; fail-fast call took {} µs; first answer {} ms after the database \
         returned",
        opened_after.as_millis(),
        fail_fast.as_micros(),
        recovered.as_millis()
    );
    assert_eq!(primary.state(), BreakerState::Closed, "a successful probe closes the breaker");
    assert_eq!(client.health().await.overall, HealthState::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_costs_no_error_and_its_breaker_closes_when_it_returns() {
    let db = TestDb::create("res_redis").await;
    let redis = RedisServer::start().await;
    let mut config = AuditConfig::default();
    config.cache.redis_url = Some(redis.url());
    config.cache.key_prefix = format!("audit-db-res-{}:", Uuid::new_v4().simple());
    config.cache.local_staleness_ms = 0;
    config.circuit_breaker.failure_threshold = 3;
    config.circuit_breaker.reset_timeout_ms = 500;

    // Wired as `App::client` wires it: one registry; Redis behind a breaker without retry; the cache's own Redis
    // bounds generous for a loaded machine.
    let app = open_app(&db.url, config).await;
    app.migrate().await.unwrap();
    let registry = app.breakers();
    let redis_policy =
        Policy::from_config(&app.config.circuit_breaker, registry, names::REDIS).with_retry(RetrySchedule::none());
    let options = CacheOptions {
        redis_timeout: Duration::from_millis(1_000),
        // Owed invalidations are re-sent every 200 ms or so, until Redis takes them.
        invalidation_retry: RetrySchedule::new(u32::MAX, Duration::from_millis(200), Duration::from_millis(200)),
        ..CacheOptions::default()
    };
    let cache = TieredCache::with_policy(&app.config.cache, options, redis_policy).unwrap();
    let client: audit_server::app::Client = AuditClient::connect_with_router(
        app.client_config(),
        &app.url,
        app.partitions().await.unwrap(),
        cache,
        app.database_policy(),
        app.router().await.unwrap(),
    )
    .await
    .unwrap();

    let org1 = EventFilter { organization_id: Some("org1".into()), limit: Some(1_000), ..EventFilter::default() };
    let pg = sql(&db.url).await;
    let truth = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, Uuid>(0)).collect::<HashSet<Uuid>>();
    let answered =
        |a: &audit_client::QueryAnswer| a.page.events.iter().map(|e| e.event.event_id).collect::<HashSet<_>>();
    let org1_rows = "SELECT event_id FROM audit_log WHERE organization_id = 'org1'";

    assert_eq!(client.insert_batch(events(70, "redis")).await.unwrap().accepted(), 70);
    let a = client.query(&org1).await.unwrap();
    assert_eq!(a.tier, CacheTier::Db);
    assert_eq!(answered(&a), truth(pg.query(org1_rows, &[]).await.unwrap()));
    assert_eq!(client.query(&org1).await.unwrap().tier, CacheTier::L1, "cached while Redis is up");
    let redis_breaker = registry.get(names::REDIS).expect("the redis breaker exists");
    assert_eq!(redis_breaker.state(), BreakerState::Closed);

    redis.kill();

    // Queries keep answering, correctly, from the database; the redis breaker opens.
    let (killed_at, mut during) = (Instant::now(), 0);
    while redis_breaker.state() != BreakerState::Open {
        assert!(killed_at.elapsed() < Duration::from_secs(30), "the redis breaker did not open within 30 s");
        let a = client.query(&org1).await.expect("a dead Redis must cost no error");
        assert_eq!(answered(&a).len(), 10);
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes while Redis is down are seen at once by this process's queries.
    assert_eq!(client.insert_batch(events(14, "redis_down")).await.unwrap().accepted(), 14);
    let a = client.query(&org1).await.expect("no error while Redis is down");
    assert_eq!(answered(&a), truth(pg.query(org1_rows, &[]).await.unwrap()), "a write during the outage is seen");
    assert_eq!(a.page.events.len(), 12);
    let report = client.health().await;
    assert_eq!(report.components["redis"].status, HealthState::Degraded, "{:?}", report.components["redis"]);
    assert_eq!(report.components["primary"].status, HealthState::Healthy);
    assert_eq!(report.overall, HealthState::Degraded, "a dead cache degrades, never fails, the service");
    println!(
        "redis breaker opened after {during} queries; health: {}",
        serde_json::to_string(&report.components["redis"]).unwrap()
    );

    redis.restart().await;
    let back_at = Instant::now();
    loop {
        let a = client.query(&org1).await.expect("no error while Redis returns");
        assert_eq!(a.page.events.len(), 12);
        if redis_breaker.state() == BreakerState::Closed
            && client.health().await.components["redis"].status == HealthState::Healthy
        {
            break;
        }
        assert!(back_at.elapsed() < Duration::from_secs(30), "the redis breaker did not close within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("redis breaker closed {} ms after Redis returned", back_at.elapsed().as_millis());
    let again = EventFilter { organization_id: Some("org1".into()), limit: Some(999), ..EventFilter::default() };
    let first = client.query(&again).await.unwrap();
    assert_eq!(answered(&first), truth(pg.query(org1_rows, &[]).await.unwrap()));
    assert_eq!(client.query(&again).await.unwrap().tier, CacheTier::L1, "the cache works again with Redis back");
    assert_eq!(client.health().await.overall, HealthState::Healthy);
}
