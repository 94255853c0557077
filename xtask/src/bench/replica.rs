//! Read replicas: how far reads scale with two streaming replicas, and what read-your-writes costs when a replica
//! is 100 ms behind.
//!
//! This group brings its own servers whatever `DATABASE_URL` says: a private primary and two streaming replicas
//! (`pg_basebackup`) on this machine, so on a 2-core machine the "scaling" shares the same cores — read the ratio
//! with that in mind.
//!
//! - `replica_read_scaling`: 16 tasks run the organisation + 30-day query back to back for a fixed time through
//!   `AuditClient::query_with(…, Eventual)` with no cache: once with a client whose every read goes to the primary,
//!   once with `ReplicaRouter` over the two replicas (`least_connections`). value = queries/s with replicas ÷
//!   queries/s on the primary alone (same client concurrency, same data).
//! - `replica_ryw_wait_p99_ms`: both replicas apply WAL 100 ms late (`recovery_min_apply_delay`); a loop inserts
//!   one event and reads it back by id. Candidate: the default consistency (read-your-writes) with the default
//!   `readYourWritesWaitMs`; baseline: `Strong` (the primary). value = p99(candidate) − p99(baseline). The same
//!   with a 250 ms wait bound (reads wait for the replica instead of going to the primary) is reported beside it
//!   (`replica_ryw_wait_p99_ms_waiting`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use audit_client::{AuditClient, ClientConfig, Consistency, ReadRoute};
use audit_core::{Direct, EventFilter, NoCache, ReadRouter};
use audit_embedded::{ClusterOptions, PrivateCluster};
use audit_partition::{PartitionConfig, PartitionManager};
use audit_pg::{Connector, DatabaseConfig, PooledConn};
use audit_replica::{ReplicaEndpoint, ReplicaRouter, RouterConfig, Strategy};
use audit_server::workload::{Workload, organization};
use serde_json::json;

use super::measure::{Measure, percentile};
use super::{Ctx, progress};

/// Settings of the three clusters (they share the machine: modest memory each).
const SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "256MB"),
    ("effective_cache_size", "1GB"),
    ("work_mem", "16MB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "30min"),
    ("jit", "off"),
    ("max_connections", "200"),
];

/// Client concurrency of the scaling measure.
const TASKS: usize = 16;

struct Servers {
    dir: tempfile::TempDir,
    primary: PrivateCluster,
    replicas: Vec<PrivateCluster>,
}

async fn start_servers() -> anyhow::Result<Servers> {
    let dir = tempfile::Builder::new().prefix("audit-db-bench-replicas-").tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let options = ClusterOptions {
        settings: SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        stop_on_drop: true,
        ..ClusterOptions::default()
    };
    let primary = PrivateCluster::open(dir.path().join("primary"), options).await.context("starting the primary")?;
    audit_pg::run_migrations(&connector(&primary.url())?).await?;
    Ok(Servers { dir, primary, replicas: Vec::new() })
}

fn connector(url: &str) -> anyhow::Result<Connector> {
    Ok(Connector::new(url, DatabaseConfig::default().connect_options("primary"))?)
}

fn database_config() -> DatabaseConfig {
    DatabaseConfig { pool_size: TASKS as u32, ..DatabaseConfig::default() }
}

async fn client<Q: ReadRouter<PooledConn>>(
    url: &str,
    router: Q,
) -> anyhow::Result<AuditClient<PartitionManager, NoCache, Direct, Q>> {
    let pm = PartitionManager::connect(&connector(url)?, PartitionConfig::default()).await?;
    let config = ClientConfig { database: database_config(), slow_operation_ms: 10_000, ..ClientConfig::default() };
    Ok(AuditClient::connect_with_router(config, url, pm, NoCache, Direct, router).await?)
}

async fn router(s: &Servers, strategy: Strategy, wait_ms: u64) -> anyhow::Result<ReplicaRouter<Direct>> {
    let config = RouterConfig {
        strategy,
        health_check_interval: 200,
        read_your_writes_wait_ms: wait_ms,
        ..RouterConfig::default()
    };
    let replicas =
        s.replicas.iter().enumerate().map(|(i, r)| (ReplicaEndpoint::numbered(i + 1, r.url()), Direct)).collect();
    Ok(ReplicaRouter::start(config, &database_config(), connector(&s.primary.url())?, replicas).await?)
}

/// The replica group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let mut s = start_servers().await?;
    let rows = if ctx.sizes.rows >= 10_000_000 { 1_000_000 } else { 200_000 };
    let secs = if ctx.sizes.rows >= 10_000_000 { 30 } else { 10 };
    let loops = if ctx.sizes.rows >= 10_000_000 { 1_000 } else { 300 };

    // Data on the primary, then the replicas cloned from it (so they start in step).
    let loader = client(&s.primary.url(), audit_core::PrimaryOnly).await?;
    let mut w = Workload::new(ctx.seed, ctx.shape(), ctx.now);
    let mut left = rows;
    while left > 0 {
        let n = left.min(10_000);
        let batch: Vec<serde_json::Value> = (0..n).map(|_| w.next_event()).collect();
        loader.insert_batch(batch).await?;
        left -= n;
    }
    let raw = super::env::connect(&s.primary.url()).await?;
    raw.batch_execute("VACUUM ANALYZE audit_log").await?;
    progress(format!("replica group: {rows} rows on the primary; cloning two replicas"));
    for _ in 0..2 {
        let dir = s.dir.path().join(format!("replica{}", s.replicas.len() + 1));
        s.replicas.push(s.primary.create_replica(dir, None).await.context("creating a replica")?);
    }

    let mut measures = Vec::new();
    measures.push(read_scaling(&s, ctx, secs).await?);
    measures.extend(ryw_wait(&s, loops).await?);
    Ok(measures)
}

/// Runs the query loop with `TASKS` tasks for `secs`; returns queries/s and how many each route served.
async fn query_rate<Q: ReadRouter<PooledConn>>(
    c: &AuditClient<PartitionManager, NoCache, Direct, Q>,
    filters: &[EventFilter],
    secs: u64,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let done = Arc::new(AtomicU64::new(0));
    let on_replica = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (c, done, on_replica) = (c.clone(), done.clone(), on_replica.clone());
            let filters = filters.to_vec();
            tokio::spawn(async move {
                let mut i = t;
                while Instant::now() < deadline {
                    let a = c.query_with(&filters[i % filters.len()], Consistency::Eventual).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    if matches!(a.route, ReadRoute::Replica(_)) {
                        on_replica.fetch_add(1, Ordering::Relaxed);
                    }
                    i += TASKS;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Ok((rate, json!({"queries": n, "on_replicas": on_replica.load(Ordering::Relaxed)})))
}

async fn read_scaling(s: &Servers, ctx: &Ctx, secs: u64) -> anyhow::Result<Measure> {
    let filters: Vec<EventFilter> = (0..64u32)
        .map(|i| EventFilter {
            organization_id: Some(organization(i * 7 % ctx.shape().organizations)),
            time: audit_core::TimeRange {
                gte: Some(ctx.now - chrono::Duration::days(30)),
                lte: Some(ctx.now),
                ..Default::default()
            },
            ..EventFilter::default()
        })
        .collect();
    let primary_only = client(&s.primary.url(), audit_core::PrimaryOnly).await?;
    let with_replicas = client(&s.primary.url(), router(s, Strategy::LeastConnections, 50).await?).await?;
    // Warm both paths (caches of every server), then alternate: replicas, primary, replicas, primary.
    query_rate(&primary_only, &filters, 2).await?;
    query_rate(&with_replicas, &filters, 2).await?;
    let half = (secs / 2).max(1);
    let (r1, d1) = query_rate(&with_replicas, &filters, half).await?;
    let (p1, _) = query_rate(&primary_only, &filters, half).await?;
    let (p2, _) = query_rate(&primary_only, &filters, half).await?;
    let (r2, d2) = query_rate(&with_replicas, &filters, half).await?;
    let (replicas, primary) = ((r1 + r2) / 2.0, (p1 + p2) / 2.0);
    progress(format!("read scaling: {replicas:.0} q/s over 2 replicas vs {primary:.0} q/s on the primary"));
    let status = with_replicas.router().status();
    let served: Vec<_> = status.replicas.iter().map(|r| json!({"id": r.id, "served": r.served})).collect();
    Ok(Measure::ratio("replica_read_scaling", replicas, primary, "queries/s", None)
        .note(format!(
            "{TASKS} tasks, organisation + 30-day query, no cache; primary and both replicas share this machine's {} \
             cores, so a ratio near or below 1 is the expected result here (scaling needs replicas on their own \
             machines)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ))
        .details(json!({"runs_with_replicas": [d1, d2], "served": served, "seconds_per_run": half})))
}

/// Insert-then-read-by-id loop; returns read latencies (µs) and how many reads each kind of server answered.
async fn ryw_loop<Q: ReadRouter<PooledConn>>(
    c: &AuditClient<PartitionManager, NoCache, Direct, Q>,
    consistency: Consistency,
    loops: usize,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut lat = Vec::with_capacity(loops);
    let mut on_replica = 0;
    for i in 0..loops {
        let ack = c
            .insert(json!({"action": tag, "status": "success", "organization_id": "bench_ryw",
                "principal_id": format!("u{i}"), "event_id": uuid::Uuid::new_v4().to_string(),
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}))
            .await?;
        let t = Instant::now();
        let a = c
            .query_with(&EventFilter { event_id: Some(ack.event_id()), ..EventFilter::default() }, consistency)
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(a.page.events.len() == 1, "{tag}: read {i} did not see its own insert (route {})", a.route);
        on_replica += u64::from(matches!(a.route, ReadRoute::Replica(_)));
    }
    Ok((lat, on_replica))
}

async fn ryw_wait(s: &Servers, loops: usize) -> anyhow::Result<Vec<Measure>> {
    for r in &s.replicas {
        let pg = super::env::connect(&r.url()).await?;
        // Two statements: ALTER SYSTEM refuses the implicit transaction of a multi-statement query.
        pg.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '100ms'").await?;
        pg.batch_execute("SELECT pg_reload_conf()").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let default_wait = RouterConfig::default().read_your_writes_wait_ms;
    let mut out = Vec::new();
    for (name, wait) in [("replica_ryw_wait_p99_ms", default_wait), ("replica_ryw_wait_p99_ms_waiting", 250)] {
        let c = client(&s.primary.url(), router(s, Strategy::LeastConnections, wait).await?).await?;
        // Warm-up, then candidate and baseline interleaved in halves.
        ryw_loop(&c, Consistency::default(), 20, "warm").await?;
        let (mut ryw, mut on_replica) = ryw_loop(&c, Consistency::default(), loops / 2, "ryw").await?;
        let (mut strong, _) = ryw_loop(&c, Consistency::Strong, loops / 2, "strong").await?;
        let (s2, _) = ryw_loop(&c, Consistency::Strong, loops / 2, "strong").await?;
        let (r2, o2) = ryw_loop(&c, Consistency::default(), loops / 2, "ryw").await?;
        strong.extend(s2);
        ryw.extend(r2);
        on_replica += o2;
        let (p99_ryw, p99_strong) = (percentile(&ryw, 99.0) / 1e3, percentile(&strong, 99.0) / 1e3);
        progress(format!(
            "{name}: read-your-writes p99 {p99_ryw:.2} ms ({on_replica}/{} on replicas) vs strong p99 {p99_strong:.2} ms",
            ryw.len()
        ));
        out.push(
            Measure::new(name, p99_ryw - p99_strong, "ms", p99_ryw, p99_strong, None)
                .note(format!(
                    "replicas apply WAL 100 ms late; readYourWritesWaitMs = {wait}; candidate = p99 of read-your-writes \
                     reads right after their insert, baseline = p99 of strong (primary) reads in the same loop"
                ))
                .details(json!({
                    "wait_ms": wait,
                    "reads": ryw.len(),
                    "served_by_replicas": on_replica,
                    "p50_ryw_ms": percentile(&ryw, 50.0) / 1e3,
                    "p50_strong_ms": percentile(&strong, 50.0) / 1e3,
                })),
        );
    }
    Ok(out)
}
