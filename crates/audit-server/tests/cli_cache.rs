//! The tiered query cache as a user of the `audit-db` binary meets it: separate processes share answers through
//! Redis (L2), a write in another process is seen by the next query, and an unreachable Redis costs nothing but
//! the cache — against a real PostgreSQL and a real Redis.

use std::path::Path;
use std::process::Output;

use audit_cache::{CacheConfig, TieredCache};
use audit_core::QueryCache as _;
use audit_testkit::{TestDb, redis_url};
use chrono::{Duration, SecondsFormat, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
use cli::{stderr, stdout};

fn audit_db(db: &TestDb, config: &Path, redis: &str, args: &[&str]) -> Output {
    cli::command(args)
        .arg("--config")
        .arg(config)
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis)
        .output()
        .expect("audit-db runs")
}

/// The cache tier the query logged (`cache=db`, `cache=l1`, `cache=l2`).
fn tier(o: &Output) -> String {
    let err = stderr(o);
    let tiers: Vec<&str> = err
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("cache="))
        .map(|t| t.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
        .collect();
    assert_eq!(tiers.len(), 1, "one query, one tier logged: {err}");
    tiers[0].to_string()
}

fn event_ids(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("NDJSON row ({e}): {l}"));
            v["event_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn event(org: &str, action: &str, ago: Duration) -> Value {
    json!({"event_id": Uuid::new_v4().to_string(), "action": action, "status": "failure",
           "timestamp": (Utc::now() - ago).to_rfc3339_opts(SecondsFormat::Micros, true), "organization_id": org,
           "principal_id": "mallory", "data_classification": "CONFIDENTIAL", "details": {"ip": "203.0.113.7"}})
}

fn ingest(db: &TestDb, config: &Path, redis: &str, dir: &Path, name: &str, events: &[Value]) {
    let file = cli::write_lines(dir, name, events);
    let o = audit_db(db, config, redis, &["ingest", file.to_str().unwrap()]);
    assert!(o.status.success(), "ingest: {}\n{}", stdout(&o), stderr(&o));
}

/// Removes every Redis key under the test's prefix when dropped — also when the test panics — so the shared Redis
/// keeps nothing of ours (generation tokens live for days).
struct RedisCleanup(CacheConfig);

impl RedisCleanup {
    async fn clear(&self) -> u64 {
        TieredCache::new(&self.0).unwrap().clear().await.unwrap()
    }
}

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let config = self.0.clone();
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { TieredCache::new(&config).unwrap().clear().await })
        })
        .join();
        if !matches!(joined, Ok(Ok(_))) {
            eprintln!("warning: could not remove the test's Redis keys under {}", self.0.key_prefix);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_answers_through_redis_and_never_serve_a_stale_one() {
    let db = TestDb::create("cli_cache").await;
    let redis = redis_url();
    let dir = tempfile::tempdir().unwrap();
    // A key prefix of our own, so that nothing another test (or a real deployment) stored can answer us.
    let prefix = format!("audit-db-test-{}:", Uuid::new_v4().simple());
    let config = dir.path().join("audit-db.toml");
    std::fs::write(&config, format!("[cache]\nkeyPrefix = \"{prefix}\"\n")).unwrap();
    let cleanup =
        RedisCleanup(CacheConfig { redis_url: Some(redis.clone()), key_prefix: prefix.clone(), ..Default::default() });

    let migrate = audit_db(&db, &config, &redis, &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    let mut events = Vec::new();
    for i in 0..12 {
        events.push(event("acme", "user_login", Duration::minutes(i * 5 + 10)));
        events.push(event("globex", "user_login", Duration::minutes(i * 5 + 10)));
    }
    ingest(&db, &config, &redis, dir.path(), "first.ndjson", &events);
    let acme: Vec<&Value> = events.iter().filter(|e| e["organization_id"] == "acme").collect();

    // A fixed window, as a user would paste it: the same text in every process means the same query.
    let from = (Utc::now() - Duration::hours(3)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let to = (Utc::now() + Duration::minutes(30)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let query =
        ["query", "--org", "acme", "--action", "user_login", "--status", "failure", "--from", &from, "--to", &to];

    let first = audit_db(&db, &config, &redis, &query);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(tier(&first), "db", "a first query is answered by the database");
    let rows = event_ids(&first);
    assert_eq!(rows.len(), 12);
    let mut want: Vec<String> = acme.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    want.sort();
    let mut got = rows.clone();
    got.sort();
    assert_eq!(got, want, "the database answer is exactly acme's events");

    let second = audit_db(&db, &config, &redis, &query);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(tier(&second), "l2", "another process gets the answer from Redis: {}", stderr(&second));
    assert_eq!(stdout(&second), stdout(&first), "the cached answer prints the same rows, byte for byte");

    // Another process writes a matching event (and one that does not match); the next query includes exactly it.
    let new = event("acme", "user_login", Duration::minutes(1));
    let other = event("globex", "user_login", Duration::minutes(1));
    ingest(&db, &config, &redis, dir.path(), "second.ndjson", &[new.clone(), other]);
    let third = audit_db(&db, &config, &redis, &query);
    assert!(third.status.success(), "{}", stderr(&third));
    let rows = event_ids(&third);
    assert_eq!(rows.len(), 13, "the new event is included, not a stale answer: {}", stderr(&third));
    assert_eq!(rows[0], new["event_id"].as_str().unwrap(), "newest first");
    assert_eq!(&rows[1..], &event_ids(&first)[..], "the earlier rows follow in the same order");

    // A second deployment: another database behind the same Redis and the same key prefix. It must never be
    // answered from this database's cached pages (regression: the keys did not say which database they came from).
    let db2 = TestDb::create("cli_cache_other").await;
    let m = audit_db(&db2, &config, &redis, &["migrate"]);
    assert!(m.status.success(), "{}", stderr(&m));
    let elsewhere = audit_db(&db2, &config, &redis, &query);
    assert!(elsewhere.status.success(), "{}", stderr(&elsewhere));
    assert!(event_ids(&elsewhere).is_empty(), "another database's answer leaked through Redis: {}", stdout(&elsewhere));
    assert_eq!(tier(&elsewhere), "db", "an empty database answers itself");
    assert_eq!(tier(&third), "db", "the write invalidated the cached answer");
    let fourth = audit_db(&db, &config, &redis, &query);
    assert_eq!(tier(&fourth), "l2");
    assert_eq!(stdout(&fourth), stdout(&third));

    // With Redis unreachable the same query still answers, correctly, from the database.
    let down = audit_db(&db, &config, "redis://127.0.0.1:1", &query);
    assert_eq!(down.status.code(), Some(0), "an unreachable Redis is not an error: {}", stderr(&down));
    assert_eq!(tier(&down), "db");
    assert_eq!(stdout(&down), stdout(&third), "the same rows as the fresh answer");
    let count = audit_db(&db, &config, "redis://127.0.0.1:1", &["query", "--org", "acme", "--count"]);
    assert!(count.status.success(), "{}", stderr(&count));
    assert_eq!(stdout(&count).trim(), "13");

    // Leave nothing behind in the shared Redis.
    assert!(cleanup.clear().await > 0, "the test's keys were under its own prefix");
    db.drop().await.unwrap();
}
