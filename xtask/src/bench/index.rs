//! Index manager: what a recommended index does for the slow statement, and how long writers wait while it is
//! built on every partition.
//!
//! A fresh database gets workload rows over the last 60 days; the principal+action index is dropped and a
//! principal+action workload runs (the slow statement, p50 measured). `IndexManager::analyze` must recommend the
//! index from pg_stat_statements (HypoPG costing when installed); `apply` builds it (ON ONLY + CONCURRENTLY per
//! partition + ATTACH) while 4 writers insert one row per transaction, each insert timed. Baseline of the wait:
//! the same writers during the same length of time just before the build. Then the workload runs again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use audit_core::IndexAdvisor;
use audit_core::indexes::{ApplyPolicy, IndexAction};
use audit_server::workload::{Workload, WorkloadShape};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::measure::{Measure, Target, percentile};
use super::rows::{self, RowFactory};
use super::{Ctx, env, progress};

const WORKLOAD_SQL: &str = "SELECT id, \"timestamp\", action, status FROM audit_log \
     WHERE principal_id = $1 AND action = $2 ORDER BY \"timestamp\" DESC LIMIT 100";
const WRITERS: usize = 4;

async fn run_workload(c: &tokio_postgres::Client, pairs: &[(String, String)], iters: usize) -> anyhow::Result<f64> {
    let stmt = c.prepare(WORKLOAD_SQL).await?;
    let mut ms = Vec::with_capacity(iters);
    for i in 0..iters {
        let (p, a) = &pairs[i % pairs.len()];
        let t = Instant::now();
        c.query(&stmt, &[p, a]).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(percentile(&ms, 50.0))
}

/// Writers inserting one row per transaction; the longest single insert of each window is kept.
struct Writers {
    stop: Arc<AtomicBool>,
    /// (window number, longest insert ms, inserts) per window.
    windows: Arc<Mutex<Vec<(f64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Writers {
    async fn start(url: &str, rows: Vec<rows::Row>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let windows = Arc::new(Mutex::new(vec![(0.0f64, 0u64)]));
        let rows = Arc::new(rows);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let c = env::connect(url).await?;
            let (stop, windows, rows) = (stop.clone(), windows.clone(), rows.clone());
            tasks.push(tokio::spawn(async move {
                let stmt = c.prepare(rows::INSERT_SQL).await?;
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let r = &rows[i % rows.len()];
                    let t = Instant::now();
                    rows::insert_one(&c, &stmt, r, uuid::Uuid::new_v4()).await.context("writer insert")?;
                    let took = t.elapsed().as_secs_f64() * 1e3;
                    let mut win = windows.lock().await;
                    let last = win.last_mut().expect("a window");
                    last.0 = last.0.max(took);
                    last.1 += 1;
                    i += WRITERS;
                }
                Ok(())
            }));
        }
        Ok(Self { stop, windows, tasks })
    }

    /// Closes the current window and opens the next; returns the closed one.
    async fn next_window(&self) -> (f64, u64) {
        let mut w = self.windows.lock().await;
        let closed = *w.last().expect("a window");
        w.push((0.0, 0));
        closed
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// The index group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let app = ctx.env.fresh_database("index", &ctx.config, &ctx.covering()).await?;
    let url = app.url.clone();
    let mut c = env::connect(&url).await?;
    let n = ctx.sizes.retention_rows;
    let mut workload = Workload::new(ctx.seed ^ 0x1dc5, WorkloadShape::default(), ctx.now);
    let mut factory = RowFactory::new(ctx.now, 1);
    let mut loaded = 0;
    while loaded < n {
        let k = 50_000.min(n - loaded);
        let values: Vec<Value> = workload.by_ref().take(k).collect();
        for chunk in factory.make_all(&values)?.chunks(10_000) {
            rows::copy_rows(&mut c, "audit_log", chunk).await?;
        }
        loaded += k;
        progress(format!("index: loaded {loaded}/{n} rows (untimed)"));
    }
    let writer_values: Vec<Value> = workload.by_ref().take(20_000).collect();
    let writer_rows = factory.make_all(&writer_values)?;
    c.batch_execute("VACUUM ANALYZE audit_log").await?;
    let pairs: Vec<(String, String)> = c
        .query(
            "SELECT principal_id, action FROM audit_log WHERE principal_id IS NOT NULL ORDER BY md5(id::text) LIMIT 200",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ready = c
        .batch_execute(
            "DROP INDEX audit_log_principal_action_idx;
             CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
             SELECT pg_stat_statements_reset();",
        )
        .await;
    if let Err(e) = ready {
        let why = format!("pg_stat_statements is not available on this server: {e}");
        return Ok(vec![
            Measure::unmeasured("index_build_writer_max_block_ms", "ms", Some(Target::at_most(100.0)), why.clone()),
            Measure::unmeasured("index_recommend_query_speedup", "ratio", None, why),
        ]);
    }
    let iters = ctx.sizes.query_iters.min(200);
    run_workload(&c, &pairs, 10).await?; // warm-up
    let slow = run_workload(&c, &pairs, iters).await?;
    progress(format!("index: principal+action p50 without the index {slow:.3} ms"));

    let im = app.indexes();
    let t = Instant::now();
    let report = im.analyze().await.context("index analysis")?;
    let analyze_s = t.elapsed().as_secs_f64();
    let rec = report.recommendations.iter().find(|r| {
        matches!(&r.action, IndexAction::Create { columns, .. } if columns.first().map(String::as_str) == Some("principal_id"))
    });
    let Some(rec) = rec.cloned() else {
        let why = format!("no principal+action recommendation: {:?}", report.recommendations);
        return Ok(vec![
            Measure::unmeasured("index_build_writer_max_block_ms", "ms", Some(Target::at_most(100.0)), why.clone()),
            Measure::unmeasured("index_recommend_query_speedup", "ratio", None, why),
        ]);
    };
    progress(format!("index: recommended {:?} ({:?} costing) in {analyze_s:.1} s", rec.action, rec.costing));

    let writers = Writers::start(&url, writer_rows).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    writers.next_window().await; // warm-up window
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (baseline_max, baseline_inserts) = writers.next_window().await;
    let baseline_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let applied =
        im.apply(std::slice::from_ref(&rec.action), ApplyPolicy { allow_create: true, ..Default::default() }).await?;
    let build_secs = t.elapsed().as_secs_f64();
    let (build_max, build_inserts) = writers.next_window().await;
    writers.stop().await?;
    let done = applied.iter().any(|a| a.action == rec.action && a.outcome == "done");
    progress(format!(
        "index: build {build_secs:.1} s, longest insert {build_max:.1} ms ({build_inserts} inserts); before: {baseline_max:.1} ms ({baseline_inserts} in {baseline_secs:.1} s)"
    ));
    run_workload(&c, &pairs, 10).await?;
    let fast = run_workload(&c, &pairs, iters).await?;
    progress(format!("index: principal+action p50 with the index {fast:.3} ms"));

    let mut block = Measure::new(
        "index_build_writer_max_block_ms",
        build_max,
        "ms",
        build_max,
        baseline_max,
        Some(Target::at_most(100.0)),
    )
    .note("longest single INSERT (own transaction) of 4 writers while the index was built on every partition; baseline: the same writers for 5 s just before")
    .details(json!({
        "build_s": build_secs, "inserts_during_build": build_inserts, "baseline_inserts": baseline_inserts,
        "baseline_s": baseline_secs, "rows": n, "applied": applied, "lock_timeout_ms": im.config().lock_timeout_ms,
    }));
    if !done {
        block = block.note(format!("the build did not finish: {applied:?}"));
        block.pass = Some(false);
    }
    let speedup = Measure::new("index_recommend_query_speedup", slow / fast, "ratio", fast, slow, None)
        .raw_unit("p50 ms (candidate: with the recommended index; baseline: without)")
        .details(json!({
            "statement": WORKLOAD_SQL, "iterations": iters, "analyze_s": analyze_s,
            "recommendation": rec,
        }));
    Ok(vec![block, speedup])
}
