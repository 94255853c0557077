//! Resident memory of a full L1 cache against its configured `maxSizeMB`.
//!
//! Measured in a fresh child process (`xtask l1-rss-probe`), so that heap freed by earlier experiments cannot be
//! reused by the cache and hide its cost: VmRSS before building the cache, then after filling it with realistic
//! pages (100 workload events each, as `query` returns them) well past the point where it starts evicting.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use audit_cache::CacheConfig;
use audit_cache::TieredCache;
use audit_core::{Cursor, Page, QueryCache, QueryScope, StoredEvent};
use audit_server::workload::{Workload, WorkloadShape};
use chrono::Utc;
use serde_json::{Value, json};

use super::measure::{Measure, Target};
use super::rows::RowFactory;
use super::{Ctx, env, progress};

/// Configured budget of the measured cache.
pub(crate) const SIZE_MB: u64 = 64;

/// Events per cached page (the default query limit).
const PAGE_EVENTS: usize = 100;

/// The cache group: runs the probe in a child process and turns its report into the measure.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let out = tokio::process::Command::new(exe)
        .args(["l1-rss-probe", "--size-mb", &SIZE_MB.to_string(), "--seed", &ctx.seed.to_string()])
        .output()
        .await
        .context("running the L1 memory probe")?;
    if !out.status.success() {
        bail!("the L1 memory probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: Value = serde_json::from_slice(&out.stdout).context("reading the L1 memory probe's report")?;
    let added = report["rss_added_bytes"].as_f64().unwrap_or(f64::NAN);
    let budget = (SIZE_MB << 20) as f64;
    let mib = |b: f64| b / 1048576.0;
    progress(format!(
        "L1 full at {} entries: +{:.1} MiB resident for a {SIZE_MB} MiB budget",
        report["entries"],
        mib(added)
    ));
    Ok(vec![
        Measure::new(
            "l1_rss_ratio_vs_max_size",
            added / budget,
            "ratio",
            mib(added),
            mib(budget),
            Some(Target::at_most(1.1)),
        )
        .raw_unit("MiB")
        .note("candidate = resident memory added by the full cache, baseline = configured maxSizeMB (fresh process)")
        .details(report),
    ])
}

/// The probe itself (runs in the child process): fills a `maxSizeMB = size_mb` L1 and reports memory.
pub(crate) async fn probe(size_mb: u64, seed: u64) -> anyhow::Result<Value> {
    let now = Utc::now();
    // A pool of realistic events; pages are built from clones, so every cached page owns its allocations.
    let values: Vec<Value> = Workload::new(seed, WorkloadShape::default(), now).take(4_000).collect();
    let mut factory = RowFactory::new(now, 1);
    let pool: Vec<StoredEvent> = factory.make_all(&values)?.iter().map(|r| r.stored()).collect();
    drop(values);
    let cfg = CacheConfig {
        enabled: true,
        max_size_mb: size_mb,
        default_ttl: 3_600,
        redis_url: None,
        local_staleness_ms: 3_600_000,
        ..CacheConfig::default()
    };
    let (rss0, _) = env::rss();
    let cache = Arc::new(TieredCache::new(&cfg)?);
    let budget = cache.l1_budget_bytes();
    let mut i = 0usize;
    let mut filled_at: Option<usize> = None;
    let mut rss_full = 0u64;
    loop {
        let start = (i * 37) % pool.len();
        let events: Vec<StoredEvent> = (0..PAGE_EVENTS).map(|k| pool[(start + k) % pool.len()].clone()).collect();
        let last = events.last().map(|e| Cursor { timestamp: e.event.timestamp, event_id: e.event.event_id });
        let page = Page { events, next_cursor: last };
        let from = now.timestamp_micros() - 30 * 86_400_000_000;
        let scope = QueryScope {
            organization_id: Some(audit_server::workload::organization((i % 300) as u32)),
            from_micros: Some(from),
            to_micros: Some(now.timestamp_micros()),
        };
        let key = format!("{{\"probe\":{i}}}");
        cache.get_or_load(&scope, &key, || async move { Ok(page) }).await?;
        i += 1;
        let s = cache.stats();
        if filled_at.is_none() && s.evictions > 0 {
            filled_at = Some(i);
            rss_full = env::rss().0;
        }
        // Keep going well past the first eviction: three times the entries that fitted.
        if let Some(f) = filled_at
            && i >= 3 * f
        {
            break;
        }
        if i > 1_000_000 {
            bail!("the L1 cache never evicted after {i} pages (budget {budget} bytes)");
        }
    }
    let (rss1, hwm) = env::rss();
    let s = cache.stats();
    let page_bytes_estimate = s.bytes as f64 / s.entries.max(1) as f64;
    let report = json!({
        "max_size_mb": size_mb,
        "budget_bytes": budget,
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "rss_added_bytes": rss1.saturating_sub(rss0),
        "rss_added_at_first_eviction_bytes": rss_full.saturating_sub(rss0),
        "vm_hwm_bytes": hwm,
        "pages_inserted": i,
        "first_eviction_at": filled_at,
        "entries": s.entries,
        "weigher_bytes": s.bytes,
        "weigher_bytes_per_page": page_bytes_estimate,
        "evictions": s.evictions,
        "events_per_page": PAGE_EVENTS,
    });
    drop(cache);
    Ok(report)
}
