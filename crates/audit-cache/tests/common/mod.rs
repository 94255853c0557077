//! Helpers shared by the integration tests: pages, configurations, queries, and key counts. Redis comes from the
//! test kit: the machine's shared Redis ([`redis_url`]) or private servers and clusters a test starts, kills and
//! restarts ([`RedisServer`], [`RedisCluster`]).
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use audit_cache::{CacheConfig, CacheOptions, TieredCache};
use audit_core::{
    AuditResult, CacheTier, DataClassification, NewEvent, Page, QueryCache, QueryScope, RetrySchedule, Status,
    StoredEvent, WriteMark,
};
use chrono::{DateTime, NaiveDate};

pub(crate) use audit_testkit::redis::{RedisCluster, RedisServer};
pub(crate) use audit_testkit::redis_url;

/// A key prefix no other test uses.
pub(crate) fn unique_prefix(test: &str) -> String {
    format!("audit-cache-test:{test}:{:016x}:", rand::random::<u64>())
}

/// Microseconds of midnight UTC on a date.
pub(crate) fn micros(y: i32, m: u32, d: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros()
}

/// A scope of `org` over `[from, to)`.
pub(crate) fn scope(org: Option<&str>, from: Option<i64>, to: Option<i64>) -> QueryScope {
    QueryScope { organization_id: org.map(str::to_string), from_micros: from, to_micros: to }
}

/// A write of `org` at `ts`.
pub(crate) fn write(org: Option<&str>, ts: i64) -> WriteMark {
    WriteMark { organization_id: org.map(str::to_string), timestamp_micros: ts }
}

/// A page of `n` events of `org`, tagged with `label` (in `action` and `details`) so answers can be told apart.
pub(crate) fn page(org: &str, label: &str, n: usize, details_len: usize) -> Page {
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
pub(crate) fn config(redis: Option<String>, prefix: &str) -> CacheConfig {
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

/// Options with bounds generous enough for a loaded two-core machine, and undelivered invalidations re-sent
/// every few hundred ms.
pub(crate) fn options() -> CacheOptions {
    CacheOptions {
        redis_timeout: Duration::from_millis(1_000),
        invalidation_retry: RetrySchedule::new(u32::MAX, Duration::from_millis(50), Duration::from_millis(400)),
        ..CacheOptions::default()
    }
}

/// Builds a cache.
pub(crate) fn cache(cfg: &CacheConfig) -> Arc<TieredCache> {
    Arc::new(TieredCache::with_policy(cfg, options(), audit_core::Direct).expect("valid configuration"))
}

/// Runs a query whose loader counts its calls and answers `answer`.
pub(crate) async fn query(
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

/// Counts keys under `prefix` on one server with SCAN.
pub(crate) fn count_keys(url: &str, prefix: &str) -> usize {
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
