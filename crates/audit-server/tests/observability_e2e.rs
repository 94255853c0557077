//! The metrics audit-db documents, checked where they are really produced, and the deployment artefacts held
//! against them and against a running service:
//!
//! 1. **In this process**, wired exactly as the binary wires it (`App::client`, `App::integrity`, the telemetry
//!    sampler), behind a real Prometheus recorder with the seed's buckets: inserts (stored, duplicate, rejected),
//!    queries with an L1 hit, count, get, a transaction, checkpoint, verify, a dead Redis (its breaker opens) and a
//!    cut database (retries, errors, the primary breaker opens).
//! 2. **`audit-db serve`** (the binary, free port, its own database behind a TCP proxy): what the service records
//!    itself — build info, telemetry gauges, the periodic checkpointer — and a primary breaker trip while the
//!    database is cut; `/health`, `/ready`, `/metrics` answered by the router; `audit-db health --service` against
//!    it (the Docker `HEALTHCHECK`).
//!
//! Both scrapes must carry every metric of `audit_core::metrics::METRICS` each is expected to carry, with the
//! listed type, help text and label names; `promtool check metrics` must find nothing in either. Then the Grafana
//! dashboard, the alert rules and the manifests may name only metrics in `METRICS` that appeared in a scrape (or
//! that this test says why it cannot produce), probe only paths the router serves on the port the manifests give
//! the service, and set only variables the configuration or the binary's flags read.
//!
//! The HTTP ingest and query routes are not driven here: they will need an API key (the service rewrite), so the
//! operations are driven through the library in this process instead — the same code the routes call.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/deploy_artifacts.rs"]
mod deploy_artifacts;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_core::metrics::{METRICS, MetricKind, OPERATION_DURATION, spec};
use audit_core::{CacheTier, EventFilter};
use audit_integrity::NoteSigner;
use audit_resilience::{BreakerState, names};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_server::telemetry::Telemetry;
use audit_testkit::proxy::{ProxyMode, TcpProxy, server_addr, through};
use audit_testkit::redis::RedisServer;
use audit_testkit::{TestDb, wait_for};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------------------
// Which metric is checked where
// ---------------------------------------------------------------------------------------------------------------

/// Metrics the library run in this process must produce.
const LIBRARY_MUST: &[&str] = &[
    "audit_db_operation_duration_seconds",
    "audit_db_cache_hit_rate",
    "audit_db_circuit_breaker_state",
    "audit_db_slow_operations_total",
    "audit_db_events_total",
    "audit_db_write_transactions_total",
    "audit_db_write_transaction_seconds",
    "audit_db_group_commit_batch_size",
    "audit_db_group_commit_wait_seconds",
    "audit_db_insert_queue_depth",
    "audit_db_insert_queue_capacity",
    "audit_db_queries_total",
    "audit_db_cache_hits_total",
    "audit_db_cache_misses_total",
    "audit_db_cache_bytes",
    "audit_db_cache_entries",
    "audit_db_cache_redis_errors_total",
    "audit_db_cache_redis_seconds",
    "audit_db_circuit_breaker_transitions_total",
    "audit_db_circuit_breaker_failures_total",
    "audit_db_resilience_retries_total",
    "audit_db_pool_connections",
    "audit_db_pool_max_connections",
    "audit_db_partitions",
    "audit_db_partition_coverage_end_timestamp_seconds",
    "audit_db_partition_oldest_timestamp_seconds",
    "audit_db_partitions_created_total",
    "audit_db_partition_maintenance_runs_total",
    "audit_db_archive_free_bytes",
    "audit_db_archive_writable",
    "audit_db_checkpoints_total",
    "audit_db_checkpoint_age_seconds",
    "audit_db_verify_last_findings",
    "audit_db_verify_last_run_timestamp_seconds",
];

/// Metrics `audit-db serve` must export by itself (no HTTP ingest): identity, the sampler's gauges, the periodic
/// checkpointer, and the primary breaker tripped by a cut database.
const SERVE_MUST: &[&str] = &[
    "audit_db_build_info",
    "audit_db_operation_duration_seconds",
    "audit_db_cache_hit_rate",
    "audit_db_circuit_breaker_state",
    "audit_db_circuit_breaker_transitions_total",
    "audit_db_circuit_breaker_failures_total",
    "audit_db_insert_queue_depth",
    "audit_db_insert_queue_capacity",
    "audit_db_pool_connections",
    "audit_db_pool_max_connections",
    "audit_db_partitions",
    "audit_db_partition_coverage_end_timestamp_seconds",
    "audit_db_partition_oldest_timestamp_seconds",
    "audit_db_archive_free_bytes",
    "audit_db_archive_writable",
    "audit_db_checkpoints_total",
    "audit_db_checkpoint_age_seconds",
    "audit_db_verify_last_findings",
    "audit_db_verify_last_run_timestamp_seconds",
    "audit_db_http_requests_total",
    "audit_db_http_request_duration_seconds",
    "audit_db_http_inflight_body_bytes",
];

/// Metrics neither run produces, and why. When one appears in a scrape it is still checked (type, help, labels).
const NOT_PRODUCED: &[(&str, &str)] = &[
    ("audit_db_replica_lag_bytes", "needs a streaming replica (tests/tests/replicas.rs runs them)"),
    ("audit_db_replica_lag_seconds", "needs a streaming replica"),
    ("audit_db_replica_healthy", "needs a streaming replica"),
    ("audit_db_replica_routed_queries_total", "recorded only when replicas are configured"),
    ("audit_db_replica_exclusions_total", "needs a streaming replica"),
    ("audit_db_load_shed_total", "needs an overloaded group-commit queue (issue 17 backpressure)"),
    ("audit_db_write_waits_total", "needs a write batch waiting out a database outage (cli_resilience covers it)"),
    ("audit_db_cache_evictions_total", "needs an L1 over its byte budget"),
    ("audit_db_cache_rejected_total", "needs an answer larger than L1"),
    ("audit_db_cache_redis_bypassed_total", "needs a Redis call while its breaker is open (timing-dependent)"),
    ("audit_db_circuit_breaker_rejections_total", "timing-dependent: a call during the open period"),
    ("audit_db_retention_actions_total", "needs an expired partition (audit-partition's retention tests)"),
    ("audit_db_partition_lock_timeouts_total", "needs DDL blocked by a lock"),
    (
        "audit_db_index_scans_total",
        "the index round of serve: cli_indexes.rs serve_reports_indexes_in_health_and_metrics",
    ),
    ("audit_db_index_size_bytes", "the index round of serve: cli_indexes.rs checks it"),
    ("audit_db_index_findings", "the index round of serve: cli_indexes.rs checks it"),
    ("audit_db_index_recommendations", "the index round of serve: cli_indexes.rs checks it"),
    ("audit_db_index_actions_total", "needs an index action (audit-index's tests carry them out)"),
];

#[test]
fn every_metric_is_checked_somewhere_or_says_why_not() {
    let mut seen = BTreeSet::new();
    for n in LIBRARY_MUST.iter().chain(SERVE_MUST).chain(NOT_PRODUCED.iter().map(|(n, _)| n)) {
        assert!(spec(n).is_some(), "{n} is not in audit_core::metrics::METRICS");
        seen.insert(*n);
    }
    for m in METRICS {
        assert!(seen.contains(m.name), "{} is neither checked in a scrape nor listed in NOT_PRODUCED", m.name);
    }
    for (n, _) in NOT_PRODUCED {
        assert!(!LIBRARY_MUST.contains(n) && !SERVE_MUST.contains(n), "{n} is both required and excused");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading a scrape
// ---------------------------------------------------------------------------------------------------------------

/// One sample: series name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// One exposition: per metric family, its `# TYPE`, `# HELP`, and each sample's series name and labels.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    /// family → (series name, labels, value)
    samples: BTreeMap<String, Vec<Sample>>,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label without value in {{{text}}}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {{{text}}}"));
        out.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            s.types.insert(name.to_string(), kind.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            s.helps.insert(name.to_string(), help.to_string());
        } else if !line.starts_with('#') {
            let (series, labels, value) = match line.find('{') {
                Some(i) => {
                    let close = line.rfind('}').unwrap();
                    (&line[..i], parse_labels(&line[i + 1..close]), line[close + 1..].trim())
                }
                None => {
                    let (n, v) = line.split_once(' ').unwrap();
                    (n, BTreeMap::new(), v.trim())
                }
            };
            let family = deploy_artifacts::base_metric_name(series).to_string();
            let family = if s.types.contains_key(&family) { family } else { series.to_string() };
            let value: f64 = value.split_whitespace().next().unwrap().parse().unwrap_or(f64::NAN);
            s.samples.entry(family).or_default().push((series.to_string(), labels, value));
        }
    }
    s
}

impl Scrape {
    fn values(&self, family: &str, series: &str, want: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .get(family)
            .into_iter()
            .flatten()
            .filter(|(n, l, _)| n == series && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect()
    }

    fn label_values(&self, family: &str, label: &str) -> BTreeSet<String> {
        self.samples.get(family).into_iter().flatten().filter_map(|(_, l, _)| l.get(label).cloned()).collect()
    }
}

/// Every `audit_db_` family in the scrape is in `METRICS` with that type, help text and label names; every one in
/// `must` is present. Returns the names present.
fn check_scrape(what: &str, text: &str, must: &[&str]) -> BTreeSet<String> {
    let s = parse_scrape(text);
    let mut problems = BTreeSet::new();
    for (family, samples) in &s.samples {
        if !family.starts_with("audit_db_") {
            continue;
        }
        let Some(m) = spec(family) else {
            problems.insert(format!("{family} is exported but not in METRICS"));
            continue;
        };
        if s.types.get(family).map(String::as_str) != Some(m.kind.as_str()) {
            problems.insert(format!("{family}: # TYPE {:?}, METRICS says {}", s.types.get(family), m.kind.as_str()));
        }
        if s.helps.get(family).map(String::as_str) != Some(m.help) {
            problems.insert(format!("{family}: # HELP {:?} is not the listed help", s.helps.get(family)));
        }
        let listed: BTreeSet<&str> = m.labels.iter().copied().collect();
        for (series, labels, _) in samples {
            let mut got: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
            if m.kind == MetricKind::Histogram && series.ends_with("_bucket") {
                assert!(got.remove("le"), "{series} without le");
            }
            if got != listed {
                problems.insert(format!("{series}: labels {got:?}, METRICS says {listed:?}"));
            }
        }
        if m.kind == MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if !samples.iter().any(|(n, _, _)| *n == format!("{family}{suffix}")) {
                    problems.insert(format!("histogram {family} has no {family}{suffix}"));
                }
            }
        }
    }
    for m in must {
        if !s.samples.contains_key(*m) {
            problems.insert(format!("{m} is missing"));
        }
    }
    let problems: Vec<String> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{what} scrape:\n  {}\n--- scrape ---\n{text}", problems.join("\n  "));
    s.samples.keys().cloned().collect()
}

/// `promtool check metrics` on a scrape: no problems (lint included).
fn promtool_check_metrics(what: &str, text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; .ci/run installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on the {what} scrape:\n{said}");
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn events(n: usize, tag: &str) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            json!({
                "event_id": Uuid::new_v4().to_string(),
                "action": format!("{tag}_{}", i % 3), "status": "success",
                "organization_id": format!("org{}", i % 3), "principal_id": format!("u{i}"),
                "timestamp": (now - chrono::Duration::milliseconds(i as i64)).to_rfc3339_opts(SecondsFormat::Micros, true),
            })
        })
        .collect()
}

/// A free loopback port (bound and released; the service binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET http://127.0.0.1:port/path` by hand (HTTP/1.1, `Connection: close`): status and body.
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer within 20 s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies: good enough to keep the chunk contents (sizes are lines of hex).
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut lines = body.split("\r\n");
        while let Some(size) = lines.next() {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
            if n == 0 {
                break;
            }
            let mut chunk = String::new();
            while chunk.len() < n {
                let Some(part) = lines.next() else { break };
                if !chunk.is_empty() {
                    chunk.push_str("\r\n");
                }
                chunk.push_str(part);
            }
            out.push_str(&chunk);
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The environment variables `audit-db` reads: the configuration's table, the numbered replica variables, and the
/// `[env: …]` of every flag the binary's help lists.
fn variables_read() -> (BTreeSet<String>, Vec<String>) {
    let mut vars: BTreeSet<String> = audit_server::config::ENVIRONMENT.iter().map(|(k, _)| k.to_string()).collect();
    for args in [&["--help"][..], &["serve", "--help"], &["ingest", "--help"], &["health", "--help"]] {
        let o = cli::run_offline(args);
        cli::ok(&o, "help");
        let text = cli::stdout(&o);
        for part in text.split("[env: ").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            vars.insert(name);
        }
    }
    (vars, vec![audit_server::config::REPLICA_ENV_PREFIX.to_string()])
}

fn is_read(var: &str, vars: &BTreeSet<String>, prefixes: &[String]) -> bool {
    vars.contains(var)
        || prefixes.iter().any(|p| var.strip_prefix(p.as_str()).is_some_and(|n| n.parse::<u32>().is_ok_and(|i| i > 0)))
}

// ---------------------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------------------

/// Drives every kind of operation through the binary's wiring in this process and returns the scrape.
async fn library_scrape(archive: &Path) -> String {
    // Exactly as `serve` builds its exporter.
    let handle = audit_server::telemetry::prometheus_builder()
        .unwrap()
        .install_recorder()
        .expect("the only recorder of this test process");
    audit_core::metrics::describe_all();

    let db = TestDb::create("obs_lib").await;
    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let redis = RedisServer::start().await;
    let mut config = AuditConfig::default();
    config.database.url = Some(through(&db.url, &proxy));
    config.database.connection_timeout = 1_000;
    config.database.query_timeout = 2_000;
    config.cache.redis_url = Some(redis.url());
    config.cache.key_prefix = format!("obs-{}:", Uuid::new_v4().simple());
    config.circuit_breaker.failure_threshold = 2;
    config.circuit_breaker.reset_timeout_ms = 60_000;
    config.circuit_breaker.retry_attempts = 2;
    config.partition.archive_dir = Some(archive.to_path_buf());
    // Every operation counts as slow: the slow-operation counter must appear.
    config.monitoring.slow_query_threshold = 0;
    let app = App::open(config).await.expect("the app opens");
    app.migrate().await.expect("migrations and premake");
    let client = app.client().await.expect("client");

    // Writes: stored, duplicate, rejected.
    let batch = events(30, "lib");
    assert_eq!(client.insert_batch(batch.clone()).await.unwrap().accepted(), 30);
    client.insert(batch[0].clone()).await.unwrap();
    let mut bad = batch[1].clone();
    bad["timestamp"] = json!("yesterday-ish");
    let mixed = client.insert_batch(vec![bad, events(1, "lib2")[0].clone()]).await.unwrap();
    assert_eq!((mixed.accepted(), mixed.rejected()), (1, 1));
    // Reads: a database answer, then an L1 hit; count, get, a transaction.
    let filter = EventFilter { organization_id: Some("org1".into()), ..EventFilter::default() };
    assert_eq!(client.query(&filter).await.unwrap().tier, CacheTier::Db);
    assert_eq!(client.query(&filter).await.unwrap().tier, CacheTier::L1);
    assert_eq!(client.count(&filter).await.unwrap(), 10);
    let id: Uuid = batch[2]["event_id"].as_str().unwrap().parse().unwrap();
    assert!(client.get(id).await.unwrap().is_some());
    let f2 = filter.clone();
    assert_eq!(client.transaction(move |tx| Box::pin(async move { tx.count(&f2).await })).await.unwrap(), 10);
    // Tamper evidence: checkpoint and verify.
    let integrity = Arc::new(app.integrity().unwrap());
    let signer = NoteSigner::generate("obs-test").unwrap();
    integrity.checkpoint(&signer, None, Utc::now()).await.unwrap();
    let report = integrity.verify(&signer.verifier(), None, false, &|_| {}).await.unwrap();
    assert!(report.findings.is_empty());
    // Partition maintenance.
    let partitions = Arc::new(app.partitions().await.unwrap());
    partitions.maintain().await.unwrap();
    // The sampler's gauges.
    let telemetry = Telemetry { client: client.clone(), partitions, integrity };
    telemetry.sample().await;

    // A dead Redis: errors, then its breaker opens; reads still answer from the database.
    redis.kill();
    let redis_breaker = app.breakers().get(names::REDIS).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while redis_breaker.state() != BreakerState::Open {
        assert!(started.elapsed() < Duration::from_secs(30), "the redis breaker did not open");
        n += 1;
        let f = EventFilter { organization_id: Some(format!("none{n}")), ..EventFilter::default() };
        client.query(&f).await.expect("a dead Redis costs no error");
    }
    // A cut database: retried, failed, the primary breaker opens.
    proxy.set_mode(ProxyMode::Cut);
    let primary = app.breakers().get(names::PRIMARY).unwrap();
    let started = Instant::now();
    while primary.state() != BreakerState::Open {
        assert!(started.elapsed() < Duration::from_secs(60), "the primary breaker did not open");
        assert!(client.count(&filter).await.is_err(), "a cut database answered");
    }
    proxy.set_mode(ProxyMode::Pass);
    handle.render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_carry_every_documented_metric_and_the_artefacts_name_only_what_is_served() {
    let dir = tempfile::tempdir().unwrap();

    // --- 1. the library, in this process -----------------------------------------------------------------------
    let lib = library_scrape(&dir.path().join("lib-archive")).await;
    let lib_names = check_scrape("library", &lib, LIBRARY_MUST);
    promtool_check_metrics("library", &lib);
    let s = parse_scrape(&lib);
    let ops = s.label_values(OPERATION_DURATION, "operation");
    for op in ["insert", "insert_batch", "query", "count", "get", "transaction", "verify", "checkpoint"] {
        assert!(ops.contains(op), "no {OPERATION_DURATION}{{operation=\"{op}\"}}: {ops:?}");
    }
    assert_eq!(s.label_values(OPERATION_DURATION, "status"), ["error", "success"].map(String::from).into());
    let les = s.label_values(OPERATION_DURATION, "le");
    let want: BTreeSet<String> = ["0.001", "0.01", "0.1", "1", "5", "10", "+Inf"].map(String::from).into();
    assert_eq!(les, want, "the seed's buckets");
    assert_eq!(
        s.label_values("audit_db_events_total", "result"),
        ["duplicate", "rejected", "stored"].map(String::from).into()
    );
    assert_eq!(s.values("audit_db_events_total", "audit_db_events_total", &[("result", "stored")]), [31.0]);
    assert_eq!(s.values("audit_db_events_total", "audit_db_events_total", &[("result", "rejected")]), [1.0]);
    assert!(s.label_values("audit_db_queries_total", "tier").is_superset(&["db", "l1"].map(String::from).into()));
    assert_eq!(
        s.label_values("audit_db_cache_hit_rate", "cache_type"),
        ["l1", "l2", "overall"].map(String::from).into()
    );
    for (component, to) in [("redis", "open"), ("primary", "open")] {
        let v = s.values(
            "audit_db_circuit_breaker_transitions_total",
            "audit_db_circuit_breaker_transitions_total",
            &[("component", component), ("to", to)],
        );
        assert_eq!(v, [1.0], "{component} breaker → {to}");
        let state =
            s.values("audit_db_circuit_breaker_state", "audit_db_circuit_breaker_state", &[("component", component)]);
        assert_eq!(state, [1.0], "{component} breaker state gauge reads open");
    }
    assert_eq!(s.values("audit_db_archive_writable", "audit_db_archive_writable", &[]), [1.0]);

    // --- 2. `audit-db serve` ------------------------------------------------------------------------------------
    let db = TestDb::create("obs_serve").await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let lines: Vec<String> = events(12, "serve").iter().map(Value::to_string).collect();
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    cli::ok(&cli::run(&db.url, &[], &["ingest", file.to_str().unwrap()]), "ingest");
    let keys = dir.path().join("keys");
    cli::ok(&cli::run_offline(&["keygen", "--out", keys.to_str().unwrap()]), "keygen");
    let key = keys.join("signing.key");
    let key_env = [("AUDIT_DB_SIGNING_KEY_FILE", key.to_str().unwrap())];
    cli::ok(&cli::run(&db.url, &key_env, &["checkpoint"]), "checkpoint");
    cli::ok(&cli::run(&db.url, &key_env, &["verify"]), "verify");

    let proxy = TcpProxy::start(server_addr(&db.url).await).await;
    let port = free_port();
    let archive = dir.path().join("serve-archive");
    std::fs::create_dir_all(&archive).unwrap();
    let config = dir.path().join("audit-db.toml");
    std::fs::write(
        &config,
        "[circuitBreaker]\nfailureThreshold = 2\nresetTimeoutMs = 60000\nretryAttempts = 1\n\
         [database]\nconnectionTimeout = 1000\nqueryTimeout = 2000\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = cli::async_command(&["serve"]);
    serve
        .env("DATABASE_URL", through(&db.url, &proxy))
        .env("AUDIT_DB_LISTEN", &listen)
        .env("AUDIT_DB_CONFIG", &config)
        .env("AUDIT_DB_SIGNING_KEY_FILE", &key)
        .env("AUDIT_DB_CHECKPOINT_INTERVAL_SECS", "1")
        .env("AUDIT_DB_ARCHIVE_DIR", &archive)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = serve.spawn().expect("serve starts");
    wait_for("serve answers /ready", Duration::from_secs(30), || async {
        matches!(http_get(port, "/ready").await, Ok((200, _)))
    })
    .await;
    // More events while serve runs (another process writes them): serve's periodic checkpointer seals them.
    let lines: Vec<String> = events(5, "serve2").iter().map(Value::to_string).collect();
    let file = cli::write_lines(dir.path(), "more.ndjson", &lines);
    cli::ok(&cli::run(&db.url, &[], &["ingest", file.to_str().unwrap()]), "ingest while serve runs");
    wait_for("serve's checkpointer and sampler", Duration::from_secs(30), || async {
        http_get(port, "/metrics").await.is_ok_and(|(_, b)| {
            b.contains("operation=\"checkpoint\"")
                && b.contains("audit_db_checkpoint_age_seconds{")
                && b.contains("audit_db_checkpoints_total ")
        })
    })
    .await;

    // The Docker HEALTHCHECK: `audit-db health --service` against the running service, then a dead port.
    let hc = cli::command(&["health", "--service", &format!("http://{listen}")]).output().unwrap();
    cli::ok(&hc, "health --service");
    let report: Value = serde_json::from_str(&cli::stdout(&hc)).expect("the /health body is printed");
    assert!(report["components"]["primary"].is_object(), "{report}");
    let dead = cli::command(&["health", "--service", &format!("http://127.0.0.1:{}", free_port())]).output().unwrap();
    assert_eq!(dead.status.code(), Some(1), "a refused connection is unhealthy: {}", cli::stderr(&dead));
    assert!(cli::stderr(&dead).contains("/health"), "{}", cli::stderr(&dead));

    // Cut the database: the checkpointer's calls fail and the primary breaker opens; /ready says so, /metrics and
    // /health still answer.
    proxy.set_mode(ProxyMode::Cut);
    wait_for("serve's primary breaker to open", Duration::from_secs(60), || async {
        http_get(port, "/metrics")
            .await
            .is_ok_and(|(_, b)| b.contains("audit_db_circuit_breaker_state{component=\"primary\"} 1"))
    })
    .await;
    let (ready, _) = http_get(port, "/ready").await.unwrap();
    assert_eq!(ready, 503, "/ready while the database is cut");
    let (_, served) = http_get(port, "/metrics").await.unwrap();
    let hc = cli::command(&["health", "--service", &format!("http://{listen}")]).output().unwrap();
    assert_eq!(hc.status.code(), Some(1), "the HEALTHCHECK fails while the primary is unreachable");
    proxy.set_mode(ProxyMode::Pass);

    let serve_names = check_scrape("serve", &served, SERVE_MUST);
    promtool_check_metrics("serve", &served);
    let s = parse_scrape(&served);
    assert_eq!(
        s.values("audit_db_build_info", "audit_db_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        [1.0]
    );
    let v = s.values(
        "audit_db_circuit_breaker_transitions_total",
        "audit_db_circuit_breaker_transitions_total",
        &[("component", "primary"), ("to", "open")],
    );
    assert_eq!(v, [1.0], "serve's primary breaker opened once");
    assert!(s.label_values("audit_db_checkpoint_age_seconds", "log").len() >= 3, "one age per log");
    assert_eq!(s.values("audit_db_verify_last_findings", "audit_db_verify_last_findings", &[]), [0.0]);
    // HTTP requests by route template: the probes and the scrapes above, and /ready's 503 while the database was cut.
    let routes = s.label_values("audit_db_http_requests_total", "route");
    for r in ["/health", "/ready", "/metrics"] {
        assert!(routes.contains(r), "no audit_db_http_requests_total{{route=\"{r}\"}}: {routes:?}");
    }
    let ready_503 = s.values(
        "audit_db_http_requests_total",
        "audit_db_http_requests_total",
        &[("route", "/ready"), ("method", "GET"), ("status", "503")],
    );
    assert_eq!(ready_503, [1.0], "/ready answered 503 once while the database was cut");

    // Which paths the router serves: every probe path answers something other than 404 on the service's port.
    for path in ["/health", "/ready", "/metrics"] {
        let code = http_get(port, path).await.unwrap().0;
        assert!(code != 404 && code != 0, "{path} answered {code}");
    }
    assert_eq!(http_get(port, "/no-such-probe").await.unwrap().0, 404, "the router answers 404 for unknown paths");

    // --- 3. the artefacts against the scrapes, the router and the configuration -----------------------------------
    let produced: BTreeSet<String> = lib_names.union(&serve_names).cloned().collect();
    let excused: BTreeMap<&str, &str> = NOT_PRODUCED.iter().copied().collect();
    let mut named = BTreeMap::<String, String>::new();
    let dash: Value = serde_json::from_str(&read("deploy/grafana/audit-db-dashboard.json")).unwrap();
    for e in deploy_artifacts::dashboard_expressions(&dash) {
        for n in deploy_artifacts::metric_names_in_promql(&e).unwrap() {
            named.entry(n).or_insert_with(|| format!("dashboard: {e}"));
        }
    }
    for r in deploy_artifacts::alert_rules(&read("deploy/prometheus/alerts.yaml")).unwrap() {
        for n in deploy_artifacts::metric_names_in_promql(&r.expr).unwrap() {
            named.entry(n).or_insert_with(|| format!("alert {}", r.name));
        }
    }
    let mut problems = Vec::new();
    for (n, where_) in &named {
        if deploy_artifacts::PROMETHEUS_SYNTHETIC_SERIES.contains(&n.as_str()) {
            continue;
        }
        if spec(n).is_none() {
            problems.push(format!("{where_} names {n}, which is not in audit_core::metrics::METRICS"));
        } else if !produced.contains(n) && !excused.contains_key(n.as_str()) {
            problems.push(format!("{where_} names {n}, which no scrape carried"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Manifests: probes on the port the service listens on, on paths the router served above; variables it reads.
    let (vars, prefixes) = variables_read();
    let dir_k = "deploy/kubernetes";
    let files = deploy_artifacts::kustomization_resources(&read(&format!("{dir_k}/kustomization.yaml"))).unwrap();
    let all = files.iter().map(|f| read(&format!("{dir_k}/{f}"))).collect::<Vec<_>>().join("\n---\n");
    let set = deploy_artifacts::manifest_env_vars(&all).unwrap();
    let unknown: Vec<_> = set.iter().filter(|v| !is_read(v, &vars, &prefixes)).collect();
    assert!(unknown.is_empty(), "the manifests set variables audit-db does not read: {unknown:?}");
    let listen_port: u16 = read(&format!("{dir_k}/configmap.yaml"))
        .lines()
        .find_map(|l| l.trim().strip_prefix("AUDIT_DB_LISTEN:"))
        .map(|v| v.trim().trim_matches('"').rsplit(':').next().unwrap().parse().unwrap())
        .expect("the ConfigMap sets AUDIT_DB_LISTEN");
    let probes = deploy_artifacts::manifest_probes(&all).unwrap();
    assert!(!probes.is_empty());
    for (path, probe_port) in &probes {
        assert_eq!(
            *probe_port, listen_port,
            "probe {path} asks port {probe_port}, the service listens on {listen_port}"
        );
        let code = http_get(port, path).await.unwrap().0;
        assert!(code != 404 && code != 0, "probe path {path} is not served by the router ({code})");
    }
    let compose = read("deploy/compose.yaml");
    let compose_vars =
        deploy_artifacts::compose_env_vars(&compose, |p| std::fs::read_to_string(repo().join("deploy").join(p)))
            .unwrap();
    let unknown: Vec<_> = compose_vars.iter().filter(|v| !is_read(v, &vars, &prefixes)).collect();
    assert!(unknown.is_empty(), "compose sets variables audit-db does not read: {unknown:?}");
    let docker = deploy_artifacts::dockerfile_instructions(&read("deploy/Dockerfile"));
    for (_, args) in docker.iter().filter(|(i, _)| i == "ENV") {
        for (k, _) in args.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            assert!(k.starts_with("CARGO_") || is_read(k, &vars, &prefixes), "the Dockerfile sets {k}, not read");
        }
    }

    child.start_kill().unwrap();
    let _ = child.wait().await;
}
