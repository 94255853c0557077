//! HTTP: the service's streamed batch ingest against the library's `insert_batch` of the same rows, and the
//! latency of `GET /v1/events` through the whole service (auth, filter parsing, routing, JSON).
//!
//! Two fresh databases with the same partitions: `http_lib` (written by the library client in this process) and
//! `http_svc` (written through the service, served in this process on a local port by the same router `audit-db
//! serve` uses, with an admin API key). Rounds alternate which side goes first, so a checkpoint or a noisy neighbour
//! hits both alike; each side's time is the sum of its rounds. Reads are not audited here (`api.auditReads` off),
//! as the configuration documents for benchmarks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_server::api_keys::Scope;
use audit_server::http::{ServiceState, router, serve_on};
use audit_server::workload::{Workload, organization};
use serde_json::{Value, json};

use super::measure::{Measure, Target, percentile};
use super::{Ctx, ingest, progress};

/// Events per round (one request of NDJSON, well under the 10 MiB body limit; one `insert_batch` call).
const ROUND: usize = 10_000;

/// The http group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let mut cfg = ingest::candidate_config(ctx);
    cfg.api.audit_reads = false;
    let lib_app = ctx.env.fresh_database("http_lib", &cfg, &ctx.covering()).await?;
    let svc_app = ctx.env.fresh_database("http_svc", &cfg, &ctx.covering()).await?;
    let lib = lib_app.client().await?;
    let svc_client = svc_app.client().await?;
    let state = Arc::new(ServiceState::new(&svc_app, svc_client, None)?);
    let key = state.keys.create("bench", &[Scope::Admin], "xtask bench").await?.secret;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(router(state), listener, async {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    let total = (ctx.sizes.rows / 5).clamp(ROUND, 200_000) / ROUND * ROUND;
    let mut wl = Workload::new(ctx.seed, ctx.shape(), ctx.now);
    let (mut lib_time, mut http_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..total / ROUND {
        let events: Vec<Value> = (0..ROUND).map(|_| wl.next_event()).collect();
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let lib_first = round % 2 == 0;
        for side in if lib_first { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let batch = events.clone();
                let t = Instant::now();
                let report = lib.insert_batch(batch).await?;
                lib_time += t.elapsed();
                if report.accepted() != ROUND {
                    bail!("insert_batch stored {} of {ROUND}", report.accepted());
                }
            } else {
                let request = http.post(format!("{base}/v1/events:batch")).bearer_auth(&key).body(body.clone());
                let t = Instant::now();
                let text = request.send().await?.error_for_status()?.text().await?;
                http_time += t.elapsed();
                let last: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
                    .context("the batch answer ends with a summary line")?;
                if last["summary"]["accepted"] != json!(ROUND) {
                    bail!("POST /v1/events:batch: {last}");
                }
            }
        }
    }
    let lib_rate = total as f64 / lib_time.as_secs_f64();
    let http_rate = total as f64 / http_time.as_secs_f64();
    progress(format!("{total} events: library {lib_rate:.0}/s, HTTP batch {http_rate:.0}/s"));
    let ingest =
        Measure::ratio("http_ingest_ratio_vs_library", http_rate, lib_rate, "events/s", Some(Target::at_least(0.7)))
            .note(format!(
                "{total} events in rounds of {ROUND}: POST /v1/events:batch (NDJSON) vs insert_batch, same rows"
            ));

    // Query latency: a page of one organisation's newest events, organisations in turn (the cache on, as served).
    let iters = ctx.sizes.query_iters.max(50);
    let orgs = ctx.shape().organizations.clamp(1, 300);
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters + 20 {
        let org = organization((i as u32) % orgs);
        let t = Instant::now();
        let r = http.get(format!("{base}/v1/events?org={org}&limit=50")).bearer_auth(&key).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !status.is_success() {
            bail!("GET /v1/events: {status}: {}", String::from_utf8_lossy(&body));
        }
        if i >= 20 {
            samples.push(ms);
        }
    }
    let p50 = percentile(&samples, 50.0);
    let p99 = percentile(&samples, 99.0);
    progress(format!("GET /v1/events p50 {p50:.3} ms, p99 {p99:.3} ms over {iters} requests"));
    let query = Measure::new("http_query_p50_ms", p50, "ms", p50, f64::NAN, Some(Target::at_most(2.0)))
        .note("GET /v1/events?org=O&limit=50 with an admin key, organisations in turn, cache on, reads not audited")
        .details(json!({"p99_ms": p99, "requests": iters}));

    let _ = stop_tx.send(());
    server.await.context("the service task")??;
    Ok(vec![ingest, query])
}
