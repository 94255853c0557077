//! Helpers shared by the integration tests: pages, configurations, and private Redis servers and clusters that
//! each test starts on free ports and stops itself.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use audit_cache::{CacheOptions, TieredCache};
use audit_core::config::CacheConfig;
use audit_core::{
    AuditResult, CacheTier, DataClassification, NewEvent, Page, QueryCache, QueryScope, Status, StoredEvent, WriteMark,
};
use chrono::{DateTime, NaiveDate};

/// The shared Redis of the machine (`REDIS_URL` or 127.0.0.1:6379).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").ok().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("audit-cache-test:{test}:{:016x}:", rand::random::<u64>())
}

/// Microseconds of midnight UTC on a date.
pub fn micros(y: i32, m: u32, d: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
}

/// A scope of `org` over `[from, to)`.
pub fn scope(org: Option<&str>, from: Option<i64>, to: Option<i64>) -> QueryScope {
    QueryScope { organization_id: org.map(str::to_string), from_micros: from, to_micros: to }
}

/// A write of `org` at `ts`.
pub fn write(org: Option<&str>, ts: i64) -> WriteMark {
    WriteMark { organization_id: org.map(str::to_string), timestamp_micros: ts }
}

/// A page of `n` events of `org`, tagged with `label` (in `action` and `details`) so answers can be told apart.
pub fn page(org: &str, label: &str, n: usize, details_len: usize) -> Page {
    let events = (0..n)
        .map(|i| {
            let mut details = serde_json::Map::new();
            details.insert("label".into(), label.into());
            details.insert("amount".into(), serde_json::from_str("12345678901234567890.10").unwrap());
            details.insert("blob".into(), "d".repeat(details_len).into());
            StoredEvent {
                id: i as i64 + 1,
                ingested_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + i as i64).unwrap(),
                seq: i as i64,
                leaf_hash: [i as u8; 32],
                event: NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_id_supplied: true,
                    timestamp: DateTime::from_timestamp_micros(1_704_067_200_000_000 - i as i64).unwrap(),
                    action: format!("{label}-{i}"),
                    status: Status::Success,
                    principal_id: Some("user-1".into()),
                    organization_id: Some(org.into()),
                    target_resource_type: Some("patient".into()),
                    target_resource_id: Some(format!("p{i}")),
                    outcome_description: None,
                    correlation_id: None,
                    data_classification: DataClassification::Phi,
                    retention_policy: "standard".into(),
                    event_version: "1.0".into(),
                    ttl: None,
                    processing_latency: Some(3),
                    details,
                },
            }
        })
        .collect();
    Page { events, next_cursor: None }
}

/// A configuration for tests.
pub fn config(redis: Option<String>, prefix: &str) -> CacheConfig {
    CacheConfig {
        enabled: true,
        max_size_mb: 8,
        default_ttl: 60,
        max_keys: 1_000,
        redis_url: redis,
        redis_cluster_mode: false,
        key_prefix: prefix.into(),
        local_staleness_ms: 1_000,
    }
}

/// Options with bounds generous enough for a loaded two-core machine.
pub fn options() -> CacheOptions {
    CacheOptions {
        redis_timeout: Duration::from_millis(1_000),
        redis_retry_after: Duration::from_millis(200),
        ..CacheOptions::default()
    }
}

/// Builds a cache.
pub fn cache(cfg: &CacheConfig) -> Arc<TieredCache> {
    Arc::new(TieredCache::with_policy(cfg, options(), audit_core::Direct).expect("valid configuration"))
}

/// Runs a query whose loader counts its calls and answers `answer`.
pub async fn query(
    c: &TieredCache,
    s: &QueryScope,
    key: &str,
    calls: &AtomicUsize,
    answer: Page,
) -> AuditResult<(Arc<Page>, CacheTier)> {
    c.get_or_load(s, key, || async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(answer)
    })
    .await
}

/// Picks a port that is free, as is `port + 10000` (a cluster node's bus port).
pub fn free_port() -> u16 {
    loop {
        let p = 20_000 + (rand::random::<u16>() % 20_000);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else { return false };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else { return false };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// A redis-server process this test owns; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on `port` with no persistence (plus `extra` arguments) and waits until it answers.
    pub fn start(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let server = Self { port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            assert!(Instant::now() < deadline, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, by its own pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster in a temporary directory, stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let conf = conf.to_str().unwrap().to_string();
            nodes.push(RedisServer::start(
                port,
                dir.path(),
                &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "5000"],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli is installed");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            loop {
                let client = redis::Client::open(n.url()).unwrap();
                let ok = client
                    .get_connection_with_timeout(Duration::from_millis(500))
                    .ok()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c).ok())
                    .is_some_and(|info| info.contains("cluster_state:ok"));
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not become ready");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { nodes, _dir: dir }
    }
}

/// Counts keys under `prefix` on one server with SCAN.
pub fn count_keys(url: &str, prefix: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Result<Vec<String>, _> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
        .unwrap()
        .collect();
    keys.unwrap().len()
}
