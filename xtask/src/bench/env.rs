//! The benchmark's environment: a PostgreSQL server (a private cluster in a temporary directory unless
//! `DATABASE_URL` is given), one fresh database per experiment created from the migrations, Redis (the given one or
//! a private `redis-server`), and facts about the machine.
//!
//! Everything created here is removed at the end: the private cluster with its directory, databases created on a
//! given server, the private Redis, and the benchmark's Redis keys (by their unique prefix).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_cache::CacheConfig;
use audit_cache::TieredCache;
use audit_core::HealthState;
use audit_core::QueryCache as _;
use audit_embedded::{ClusterOptions, PrivateCluster};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

use super::progress;

/// Server settings of the private cluster: durable (`fsync`, `synchronous_commit`, `full_page_writes` stay on, as
/// in the product), with memory and checkpoint spacing suited to a write-heavy benchmark so that checkpoints do not
/// land at random inside measured phases.
pub(crate) const PG_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "1GB"),
    ("effective_cache_size", "4GB"),
    ("work_mem", "32MB"),
    ("maintenance_work_mem", "512MB"),
    ("wal_buffers", "64MB"),
    ("max_wal_size", "16GB"),
    ("min_wal_size", "1GB"),
    ("checkpoint_timeout", "30min"),
    ("checkpoint_completion_target", "0.9"),
    ("max_connections", "300"),
    ("jit", "off"),
    // Server-side time per statement, read after each ingest phase as profile evidence (costs both sides alike).
    ("shared_preload_libraries", "pg_stat_statements"),
    ("pg_stat_statements.track_utility", "on"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];

/// Connects a plain tokio-postgres client (the "no library" side of every baseline) and drives its connection.
pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connecting to {}", describe_url(url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "benchmark connection ended");
        }
    });
    Ok(client)
}

/// The same server URL naming another database (URL form `postgres://…/db?…` or key/value form).
pub(crate) fn with_database(url: &str, db: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (head, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let after = &head[scheme_end + 3..];
        let base = match after.find('/') {
            Some(slash) => &head[..scheme_end + 3 + slash],
            None => head,
        };
        format!("{base}/{db}{query}")
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|kv| !kv.starts_with("dbname=")).collect();
        format!("{} dbname={db}", kept.join(" ")).trim().to_string()
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Where Redis comes from.
enum RedisSource {
    /// `REDIS_URL` or the default local server answered.
    Given,
    /// We started `redis-server` on a free port; stopped at the end.
    Private(tokio::process::Child),
}

/// Everything the experiments share.
pub(crate) struct BenchEnv {
    /// Base URL of the server (some database on it).
    base_url: String,
    cluster: Option<PrivateCluster>,
    dir: Option<tempfile::TempDir>,
    db_prefix: String,
    created: std::sync::Mutex<Vec<String>>,
    /// URL of the Redis used for L2.
    pub redis_url: String,
    redis: RedisSource,
    /// Prefix of every Redis key the benchmark writes (unique per run).
    pub key_prefix: String,
    keep: bool,
    /// A scratch directory for archives and the like (inside the run's temporary directory).
    pub scratch: PathBuf,
    /// Description of the server and Redis for the results.
    pub server_desc: Value,
}

impl std::fmt::Debug for BenchEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchEnv").field("base_url", &audit_pg::redact(&self.base_url)).finish_non_exhaustive()
    }
}

impl BenchEnv {
    /// Starts (or connects to) PostgreSQL and Redis.
    pub(crate) async fn start(database_url: Option<String>, keep: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("audit-db-bench-").tempdir().context("creating a temp directory")?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The private cluster runs as the `postgres` OS user when we are root: it must traverse this directory.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .context("making the temp directory traversable")?;
        }
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).context("creating the scratch directory")?;
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let (base_url, cluster, db_prefix, server_desc) = match database_url {
            Some(url) => {
                progress(format!("using the PostgreSQL server of DATABASE_URL ({})", describe_url(&url)));
                let desc = json!({"kind": "given", "target": describe_url(&url)});
                (url, None, format!("xtask_bench_{}_{suffix}_", std::process::id()), desc)
            }
            None => {
                let data = dir.path().join("pg");
                progress(format!("starting a private PostgreSQL cluster in {}", data.display()));
                let options = ClusterOptions {
                    settings: PG_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    stop_on_drop: true,
                    database: "postgres".into(),
                    ..ClusterOptions::default()
                };
                let cluster = PrivateCluster::open(&data, options).await.context("starting the private cluster")?;
                let desc = json!({
                    "kind": "private cluster (initdb in a temporary directory, removed at the end)",
                    "port": cluster.port(),
                    "bin_dir": cluster.bin_dir().display().to_string(),
                    "settings": PG_SETTINGS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                });
                (cluster.url(), Some(cluster), "bench_".to_string(), desc)
            }
        };
        let key_prefix = format!("audit-db-bench-{}-{suffix}:", std::process::id());
        let (redis_url, redis) = find_or_start_redis(&key_prefix).await?;
        Ok(Self {
            base_url,
            cluster,
            dir: Some(dir),
            db_prefix,
            created: std::sync::Mutex::new(Vec::new()),
            redis_url,
            redis,
            key_prefix,
            keep,
            scratch,
            server_desc,
        })
    }

    /// URL of database `db` on the server.
    pub(crate) fn url_for(&self, db: &str) -> String {
        with_database(&self.base_url, db)
    }

    /// Creates a fresh database named `<prefix><name>` (dropping a leftover of the same name), applies the
    /// migrations and premakes partitions through `App`, creates the partitions covering `[from, to]`, and returns
    /// the app (its URL names the new database).
    pub(crate) async fn fresh_database(
        &self,
        name: &str,
        config: &AuditConfig,
        covering: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> anyhow::Result<App> {
        let db = format!("{}{name}", self.db_prefix);
        let admin = connect(&self.base_url).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db)))
            .await
            .with_context(|| format!("dropping a leftover database {db}"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'", quote_ident(&db)))
            .await
            .with_context(|| format!("creating database {db}"))?;
        self.created.lock().expect("created lock").push(db.clone());
        let mut config = config.clone();
        config.database.url = Some(self.url_for(&db));
        let app = App::open(config).await?;
        app.migrate().await.with_context(|| format!("migrating {db}"))?;
        let partitions = app.partitions().await?;
        for (from, to) in covering {
            partitions.ensure_range(*from, *to).await.with_context(|| format!("creating partitions in {db}"))?;
        }
        Ok(app)
    }

    /// `SELECT version()` and the settings that matter for reading the numbers.
    pub(crate) async fn describe_server(&self) -> anyhow::Result<Value> {
        let c = connect(&self.base_url).await?;
        let version: String = c.query_one("SELECT version()", &[]).await?.get(0);
        let mut settings = serde_json::Map::new();
        for name in [
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_level",
            "max_wal_size",
            "checkpoint_timeout",
            "work_mem",
            "effective_io_concurrency",
            "max_connections",
        ] {
            if let Ok(row) = c.query_one(&format!("SHOW {name}"), &[]).await {
                settings.insert(name.to_string(), Value::from(row.get::<_, String>(0)));
            }
        }
        Ok(json!({"version": version, "server": self.server_desc, "settings": settings}))
    }

    /// Issues a `CHECKPOINT` so that a measured phase does not pay for the previous phase's dirty pages.
    pub(crate) async fn checkpoint(&self) {
        match connect(&self.base_url).await {
            Ok(c) => {
                if let Err(e) = c.batch_execute("CHECKPOINT").await {
                    progress(format!("CHECKPOINT failed (not a superuser?): {e}"));
                }
            }
            Err(e) => progress(format!("CHECKPOINT skipped: {e:#}")),
        }
    }

    /// Description of Redis for the results.
    pub(crate) fn redis_desc(&self) -> Value {
        match self.redis {
            RedisSource::Given => json!({"kind": "given", "url": audit_pg::redact(&self.redis_url)}),
            RedisSource::Private(_) => {
                json!({"kind": "private redis-server (--save \"\" --appendonly no)", "url": self.redis_url})
            }
        }
    }

    /// Removes what the run created (unless `--keep`).
    pub(crate) async fn shutdown(mut self) {
        let cache_cfg = CacheConfig {
            redis_url: Some(self.redis_url.clone()),
            key_prefix: self.key_prefix.clone(),
            ..CacheConfig::default()
        };
        if let Ok(cache) = TieredCache::new(&cache_cfg) {
            match cache.clear().await {
                Ok(n) => progress(format!("removed {n} benchmark keys from Redis")),
                Err(e) => progress(format!("could not remove the benchmark's Redis keys: {e}")),
            }
        }
        if let RedisSource::Private(child) = &mut self.redis {
            let _ = child.kill().await;
            progress("stopped the private redis-server");
        }
        if self.keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                progress(format!("--keep: left the databases and {} in place", path.display()));
            }
            if let Some(cluster) = self.cluster.take() {
                progress(format!("--keep: private cluster still runs on port {}", cluster.port()));
                std::mem::forget(cluster);
            }
            return;
        }
        if let Some(cluster) = self.cluster.take() {
            if let Err(e) = cluster.stop().await {
                progress(format!("stopping the private cluster: {e}"));
            }
            drop(cluster);
        } else {
            let dbs: Vec<String> = self.created.lock().expect("created lock").drain(..).collect();
            if let Ok(admin) = connect(&self.base_url).await {
                for db in dbs {
                    if let Err(e) =
                        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db))).await
                    {
                        progress(format!("could not drop {db}: {e}"));
                    }
                }
            }
        }
        drop(self.dir.take());
    }
}

/// `PostgreSQL at host:port` of a URL, for messages.
fn describe_url(url: &str) -> String {
    url.parse::<tokio_postgres::Config>().map(|c| audit_pg::describe_target(&c)).unwrap_or_else(|_| "PostgreSQL".into())
}

/// Redis for L2: `REDIS_URL`, else 127.0.0.1:6379, else a private `redis-server` on a free port.
async fn find_or_start_redis(key_prefix: &str) -> anyhow::Result<(String, RedisSource)> {
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if redis_answers(&url, key_prefix).await {
        progress(format!("using Redis at {}", audit_pg::redact(&url)));
        return Ok((url, RedisSource::Given));
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for redis-server")?
        .port();
    progress(format!(
        "Redis at {} does not answer: starting a private redis-server on port {port}",
        audit_pg::redact(&url)
    ));
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server (install redis-server or set REDIS_URL)")?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis_answers(&url, key_prefix).await {
            return Ok((url, RedisSource::Private(child)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the private redis-server on port {port} did not answer within 10 s")
}

async fn redis_answers(url: &str, key_prefix: &str) -> bool {
    let cfg =
        CacheConfig { redis_url: Some(url.to_string()), key_prefix: key_prefix.to_string(), ..CacheConfig::default() };
    let Ok(cache) = TieredCache::new(&cfg) else { return false };
    matches!(cache.ping().await, Some(h) if h.status == HealthState::Healthy)
}

/// Resident and peak resident memory of this process, bytes (`VmRSS`, `VmHWM`).
pub(crate) fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) of this process, seconds (from `/proc/self/stat`, in USER_HZ = 100 ticks).
pub(crate) fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Facts about the machine, the toolchain and the source tree.
pub(crate) fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| l.trim_start_matches("PRETTY_NAME=").trim_matches('"').to_string())
        .unwrap_or_default();
    let cmd = |prog: &str, args: &[&str]| {
        std::process::Command::new(prog)
            .args(args)
            .current_dir(crate::workspace_root())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let dirty = cmd("git", &["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "rustc": cmd("rustc", &["--version"]),
        "git_commit": cmd("git", &["rev-parse", "--short", "HEAD"]),
        "git_dirty": dirty,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_both_url_forms() {
        assert_eq!(with_database("postgres://u@h:5432/test", "b1"), "postgres://u@h:5432/b1");
        assert_eq!(with_database("postgres://u:p@h/test?sslmode=disable", "b1"), "postgres://u:p@h/b1?sslmode=disable");
        assert_eq!(with_database("postgresql://h:1", "b1"), "postgresql://h:1/b1");
        assert_eq!(with_database("host=h user=u dbname=test", "b1"), "host=h user=u dbname=b1");
    }

    #[test]
    fn rss_is_read_from_proc() {
        let (rss, hwm) = rss();
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
    }

    #[test]
    fn cpu_time_is_read_and_grows() {
        let a = process_cpu_seconds();
        let mut x = 0u64;
        let t = Instant::now();
        // Spin until the kernel has accounted at least one more tick to this process (bounded).
        while process_cpu_seconds() <= a && t.elapsed().as_secs() < 10 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        }
        assert!(process_cpu_seconds() > a, "CPU time did not grow from {a}");
    }
}
