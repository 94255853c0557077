//! Overload and soak: serve's memory when offered far more than the database absorbs, and its memory over a soak.
//!
//! `overload_rss_ratio`: `audit-db serve` (the real binary, as built for this run) on a fresh database. First a
//! paced load — one client, batches of 500 NDJSON events with a pause between them — whose peak RSS is the
//! baseline; then [`CLIENTS`] clients posting batches of 2,000 back to back with no pacing (far more than the
//! group-commit queue drains: the offered/absorbed ratio is in the details), whose peak RSS is the candidate. The
//! service must shed the excess with 429/503 + Retry-After instead of queueing it; any other 5xx is counted in
//! `overload_other_5xx` (target 0). `soak_rss_growth_pct`: the RSS growth after warm-up of `cargo xtask soak`'s
//! mixed load (2 minutes in --quick, 10 in full), which must also end with clean accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::measure::{Measure, Target};
use super::{Ctx, progress};
use crate::soak::{Serve, Setup, SoakParams, event};

/// Concurrent unpaced clients of the overload phase.
const CLIENTS: usize = 64;

/// Status counts of a phase.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    throttled_429: AtomicU64,
    unavailable_503: AtomicU64,
    other_5xx: AtomicU64,
    other: AtomicU64,
    transport: AtomicU64,
    events_accepted: AtomicU64,
    events_offered: AtomicU64,
}

impl Counts {
    fn json(&self, secs: f64) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "ok": g(&self.ok), "429": g(&self.throttled_429), "503": g(&self.unavailable_503),
            "other_5xx": g(&self.other_5xx), "other": g(&self.other), "transport_errors": g(&self.transport),
            "events_accepted_per_s": g(&self.events_accepted) as f64 / secs,
            "events_offered_per_s": g(&self.events_offered) as f64 / secs,
        })
    }
}

/// Posts batches of `size` for `secs` from `clients` tasks, each pausing `pause` between requests, sampling serve's
/// RSS every 250 ms; returns (peak RSS, counts).
async fn phase(
    serve: &Serve,
    setup: &Setup,
    clients: usize,
    size: u64,
    pause: Duration,
    secs: u64,
) -> anyhow::Result<(u64, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (org, key) = setup.orgs[c % setup.orgs.len()].clone();
        let (http, counts, url) = (http.clone(), counts.clone(), format!("{}/v1/events:batch", serve.base));
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let body: String = (i..i + size).map(|n| format!("{}\n", event(&org, n))).collect();
                i += size;
                counts.events_offered.fetch_add(size, Ordering::Relaxed);
                match http.post(&url).bearer_auth(&key).body(body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        let slot = match status {
                            200..=299 => {
                                let last: Value =
                                    text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
                                let n = last["summary"]["accepted"].as_u64().unwrap_or(0);
                                counts.events_accepted.fetch_add(n, Ordering::Relaxed);
                                &counts.ok
                            }
                            429 => &counts.throttled_429,
                            503 => &counts.unavailable_503,
                            500..=599 => &counts.other_5xx,
                            _ => &counts.other,
                        };
                        slot.fetch_add(1, Ordering::Relaxed);
                        if status == 429 || status == 503 {
                            // A client that honours Retry-After would wait; an overloading one does not.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err(_) => {
                        counts.transport.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
    let mut peak = serve.rss().unwrap_or(0);
    while !tasks.is_empty() {
        tokio::select! {
            r = tasks.join_next() => { if let Some(r) = r { r?; } }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        peak = peak.max(serve.rss().unwrap_or(0));
    }
    Ok((peak, counts))
}

/// The overload group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let bin = tokio::task::block_in_place(|| crate::soak::build_binary(!cfg!(debug_assertions)))?;
    let secs = if ctx.sizes.soak_minutes <= 2 { 20 } else { 60 };
    let setup = Setup::new(bin.clone(), "ovl", 4).await?;
    let serve = setup.serve(&[]).await?;
    let (normal_peak, normal) = phase(&serve, &setup, 1, 500, Duration::from_millis(100), secs).await?;
    let normal_json = normal.json(secs as f64);
    progress(format!("overload: paced load peak RSS {:.1} MiB, {normal_json}", normal_peak as f64 / 1_048_576.0));
    let (over_peak, over) = phase(&serve, &setup, CLIENTS, 2_000, Duration::ZERO, secs).await?;
    let over_json = over.json(secs as f64);
    progress(format!(
        "overload: {CLIENTS} unpaced clients peak RSS {:.1} MiB, {over_json}",
        over_peak as f64 / 1_048_576.0
    ));
    drop(serve);
    let absorbed = over_json["events_accepted_per_s"].as_f64().unwrap_or(0.0);
    let offered = over_json["events_offered_per_s"].as_f64().unwrap_or(0.0);
    let other_5xx = over.other_5xx.load(Ordering::Relaxed) + normal.other_5xx.load(Ordering::Relaxed);
    let rss = Measure::ratio(
        "overload_rss_ratio",
        over_peak as f64,
        normal_peak as f64,
        "bytes",
        Some(Target::at_most(1.5)),
    )
    .note(format!(
        "peak VmRSS of audit-db serve: {CLIENTS} clients posting 2,000-event batches unpaced ÷ one client, 500-event \
             batches every 100 ms; {secs} s each"
    ))
    .details(json!({
        "normal": normal_json, "overload": over_json,
        "offered_over_absorbed": if absorbed > 0.0 { offered / absorbed } else { f64::NAN },
    }));
    let errors = Measure::new(
        "overload_other_5xx",
        other_5xx as f64,
        "requests",
        other_5xx as f64,
        f64::NAN,
        Some(Target::at_most(0.0)),
    )
    .note("answers with a 5xx other than 503 during both phases (429/503 are the expected shedding)");

    let minutes = ctx.sizes.soak_minutes;
    progress(format!("soak: {minutes} minutes of mixed load"));
    let params = SoakParams {
        minutes,
        rate: 1_000,
        checkpoint_every: Duration::from_secs(30),
        maintain_every: Duration::from_secs(60),
        proofs: true,
    };
    let summary = crate::soak::run(bin, &params).await?;
    if summary["clean"] != true {
        bail!("the soak was not clean: {summary}");
    }
    let growth = summary["rss_growth_pct"].as_f64().unwrap_or(f64::NAN);
    let soak = Measure::new("soak_rss_growth_pct", growth, "%", growth, f64::NAN, Some(Target::at_most(5.0)))
        .note(format!(
            "max VmRSS of serve in the last minute vs minute 1 of a {minutes}-minute `cargo xtask soak` (1,000 events/s \
             batch ingest + single inserts, queries, proofs, checkpoints, partition maintenance); accounting clean"
        ))
        .details(json!({
            "batch_p99_ms_first_minute": summary["batch_p99_ms_first_minute"],
            "batch_p99_ms_last_minute": summary["batch_p99_ms_last_minute"],
            "accounting": summary["accounting"], "throttled_429": summary["throttled_429"],
        }));
    Ok(vec![rss, errors, soak])
}
