//! Read replicas and failover through the `audit-db` binary, on real clusters: `replicas status` in both formats;
//! 100 `ingest` → `query --min-lsn` round trips that all see their event although the replica applies WAL 3 s late
//! (while `--consistency eventual` misses them, and the replica is shown to be behind); and a failover in the
//! middle of an ingest (primary stopped, replica promoted, the URL listing both with
//! `target_session_attrs=read-write`) after which every event is stored exactly once with gap-free `seq`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use audit_client::Ack;
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_testkit::cluster::start_private_cluster;
use audit_testkit::replication::{multi_host_url, parse_lsn, replay_lsn, set_apply_delay};
use audit_testkit::{assert_exactly_once_and_gap_free, sql};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;

fn audit_db(args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut c = cli::async_command(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

async fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), audit_db(args, envs).output())
        .await
        .unwrap_or_else(|_| panic!("audit-db {args:?} did not finish within 60 s"))
        .expect("audit-db runs")
}

fn ok(o: &std::process::Output, what: &str) {
    cli::ok(o, what);
}

fn event(tag: &str, i: usize) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(), "action": format!("{tag}_{}", i % 3), "status": "success",
        "organization_id": format!("org{}", i % 5), "principal_id": format!("u{i}"),
        "timestamp": (Utc::now() - chrono::Duration::milliseconds(i as i64)).to_rfc3339_opts(SecondsFormat::Micros, true),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_query_at_its_commit_lsn_sees_every_event_on_a_late_replica() {
    let primary = start_private_cluster().await.expect("primary");
    let url = primary.url();
    ok(&run(&["migrate"], &[("DATABASE_URL", &url)]).await, "migrate");
    let replica = primary.create_replica().await.expect("replica");
    let replica_url = replica.url();
    let env = [("DATABASE_URL", url.as_str()), ("AUDIT_DB_READ_REPLICA_1", replica_url.as_str())];

    // The operator's view, both formats.
    let o = run(&["replicas", "status", "--format", "json"], &env).await;
    ok(&o, "replicas status --format json");
    let status: Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    let r = &status["replicas"][0];
    assert_eq!(
        (r["id"].as_str(), r["healthy"].as_bool(), r["in_recovery"].as_bool()),
        (Some("replica-1"), Some(true), Some(true)),
        "{status}"
    );
    assert_eq!(r["url"], replica_url.as_str(), "no password in it to hide, and the URL as given");
    assert!(r["lag_bytes"].is_u64() && r["latency_ms"].is_f64() && r["excluded"].is_null(), "{status}");
    let o = run(&["replicas", "status"], &env).await;
    ok(&o, "replicas status");
    let table = cli::stdout(&o);
    assert!(
        table.contains("replica-1") && table.contains("yes") && table.contains("strategy=least_connections"),
        "{table}"
    );
    // `health` lists the replica as a component.
    let o = run(&["health"], &env).await;
    ok(&o, "health");
    let health: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(health["components"]["replica:replica-1"]["status"], "healthy", "{health}");

    set_apply_delay(&replica_url, Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut routes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..100 {
        let e = event("cli_ryw", i);
        let id = e["event_id"].as_str().unwrap().to_string();
        let file = cli::write_lines(dir.path(), "one.ndjson", &[e]);
        let o = run(&["ingest", file.to_str().unwrap()], &env).await;
        ok(&o, "ingest");
        let summary = cli::summary(&o);
        assert_eq!(cli::counts(&summary), json!({"accepted": 1, "rejected": 0, "duplicates": 0}));
        let lsn = summary["commit_lsn"].as_str().expect("ingest prints its commit_lsn").to_string();
        let q = run(&["query", "--event-id", &id, "--min-lsn", &lsn], &env).await;
        ok(&q, "query --min-lsn");
        let rows = cli::json_lines(&q);
        assert_eq!(rows.len(), 1, "round trip {i}: query --min-lsn {lsn} sees event {id}\n{}", cli::stderr(&q));
        let route = cli::stderr(&q)
            .lines()
            .find(|l| l.contains("query answered"))
            .and_then(|l| l.split("route=").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
            .expect("each query logs which server answered (route=…)");
        *routes.entry(route).or_default() += 1;
    }
    println!("100 CLI round trips in {:.1} s; answered by {routes:?}", started.elapsed().as_secs_f64());

    // `eventual` is answered by the late replica and misses fresh events — because it really has not replayed them.
    let mut misses = 0;
    for i in 0..10 {
        let e = event("cli_eventual", i);
        let id = e["event_id"].as_str().unwrap().to_string();
        let file = cli::write_lines(dir.path(), "one.ndjson", &[e]);
        let o = run(&["ingest", file.to_str().unwrap()], &env).await;
        ok(&o, "ingest");
        let lsn = parse_lsn(cli::summary(&o)["commit_lsn"].as_str().unwrap());
        let q = run(&["query", "--event-id", &id, "--consistency", "eventual"], &env).await;
        ok(&q, "query --consistency eventual");
        assert!(
            cli::stderr(&q).contains("route=replica-1"),
            "an eventual read goes to the replica:\n{}",
            cli::stderr(&q)
        );
        if cli::json_lines(&q).is_empty() {
            misses += 1;
            assert!(replay_lsn(&replica_url).await < lsn, "the replica missed event {id} although it had replayed it");
        }
    }
    assert!(misses > 0, "a replica 3 s late misses events read right after their ingest");

    // Flags that contradict each other are refused by name.
    let o = run(&["query", "--org", "x", "--consistency", "eventual", "--min-lsn", "0/1"], &env).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(cli::stderr(&o).contains("--min-lsn"), "{}", cli::stderr(&o));
    let o = run(&["query", "--org", "x", "--min-lsn", "yesterday"], &env).await;
    assert!(!o.status.success() && cli::stderr(&o).contains("yesterday"), "{}", cli::stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_ingest_stores_every_event_exactly_once() {
    const FILE_EVENTS: usize = 60_000;
    const LIBRARY_EVENTS: usize = 600;
    let primary = start_private_cluster().await.expect("primary");
    ok(&run(&["migrate"], &[("DATABASE_URL", &primary.url())]).await, "migrate");
    let standby = primary.create_replica().await.expect("replica");
    let both = multi_host_url(&[primary.port(), standby.port()], &primary.options().database);
    let env = [("DATABASE_URL", both.as_str())];

    // The binary ingests a file in small transactions…
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = (0..FILE_EVENTS).map(|i| event("failover_file", i)).collect();
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut ingest = audit_db(&["ingest", "--chunk", "300", file.to_str().unwrap()], &env)
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .expect("audit-db starts");
    // …while a library client wired like the binary group-commits single inserts.
    let mut config = AuditConfig::default();
    config.database.url = Some(both.clone());
    config.ingest.outage_patience_ms = 120_000;
    let app = App::open(config).await.expect("app");
    let client = app.client().await.expect("client");
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..LIBRARY_EVENTS / 6 {
                    acks.push(
                        c.insert(event("failover_lib", w * 1000 + i)).await.expect("every insert is acknowledged"),
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                acks
            })
        })
        .collect();

    // Once rows are arriving, the primary goes away and the standby takes over.
    let pg = sql(&primary.url()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_stop = loop {
        let n: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
        if n >= 600 {
            break n;
        }
        assert!(Instant::now() < deadline, "too few rows arrived within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(pg);
    assert!(ingest.try_wait().unwrap().is_none(), "the ingest ended before the failover; nothing would be tested");
    let failover = Instant::now();
    primary.stop().await.expect("stopping the primary");
    standby.promote().await.expect("promoting the standby");
    println!("failover after {at_stop} rows took {} ms", failover.elapsed().as_millis());

    let status =
        tokio::time::timeout(Duration::from_secs(120), ingest.wait()).await.expect("the ingest finishes").unwrap();
    let (out, err) = (std::fs::read_to_string(&out_path).unwrap(), std::fs::read_to_string(&err_path).unwrap());
    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(cli::counts(&summary), json!({"accepted": FILE_EVENTS, "rejected": 0, "duplicates": 0}), "{err}");
    let mut acks: Vec<Ack> = Vec::new();
    for w in writers {
        acks.extend(w.await.expect("writer task"));
    }
    assert!(acks.iter().all(|a| matches!(a, Ack::Stored { .. })), "every library insert was stored (not a duplicate)");

    let total = (FILE_EVENTS + LIBRARY_EVENTS) as i64;
    let new_primary = sql(&standby.url()).await;
    let in_recovery: bool = new_primary.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery, "the standby is the primary now");
    assert_exactly_once_and_gap_free(&new_primary, total).await;
    // Each library ack names the row that holds its event.
    for a in &acks {
        let Ack::Stored { event_id, id, seq, .. } = a else { unreachable!() };
        let row =
            new_primary.query_one("SELECT id, seq FROM audit_log WHERE event_id = $1", &[event_id]).await.unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (*id, *seq), "the ack of {event_id} names its row");
    }
}
