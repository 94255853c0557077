//! Overload and soak: serve's memory when offered far more than the database absorbs, and its memory over a soak.
//!
//! `overload_rss_ratio`: `audit-db serve` (the real binary, as built for this run, default configuration) on a fresh
//! database. First a paced load — one client, batches of 500 NDJSON events with a pause between them — whose peak
//! RSS is the baseline. Then the capacity: [`PROBE_CLIENTS`] closed-loop clients posting 2,000-event batches back to
//! back, whose accepted events/s is what the database absorbs. Then the overload, open loop: a new 2,000-event
//! batch request every `2,000 / (10 × capacity)` seconds, each on its own connection whatever happened to the
//! earlier ones (a closed-loop client slows down with the service's latency and never offers 10×), for the same
//! time; its peak RSS is the candidate. The service must shed the excess with 429/503 + Retry-After instead of
//! queueing it; any other 5xx is counted in `overload_other_5xx` (target 0). `soak_rss_growth_pct`: the RSS growth
//! after warm-up of `cargo xtask soak`'s mixed load (2 minutes in --quick, 10 in full), which must also end with
//! clean accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::measure::{Measure, Target};
use super::{Ctx, progress};
use crate::soak::{Serve, Setup, SoakParams, event};

/// Closed-loop clients of the capacity probe (enough to keep the writer pool busy).
const PROBE_CLIENTS: usize = 8;
/// Events per request of the probe and the overload.
const BATCH: usize = 2_000;
/// Offered ÷ absorbed of the overload phase.
const OVERLOAD_FACTOR: f64 = 10.0;
/// Most requests the load generator keeps open at once; beyond it a request is not sent and counted in
/// `not_sent` (the generator's own protection; the offered rate is reported as achieved).
const MAX_OPEN: usize = 4_096;

/// Status counts of a phase.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    throttled_429: AtomicU64,
    unavailable_503: AtomicU64,
    other_5xx: AtomicU64,
    other: AtomicU64,
    transport: AtomicU64,
    not_sent: AtomicU64,
    events_accepted: AtomicU64,
    events_offered: AtomicU64,
}

impl Counts {
    fn json(&self, secs: f64) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "ok": g(&self.ok), "429": g(&self.throttled_429), "503": g(&self.unavailable_503),
            "other_5xx": g(&self.other_5xx), "other": g(&self.other), "transport_errors": g(&self.transport),
            "not_sent": g(&self.not_sent),
            "events_accepted_per_s": g(&self.events_accepted) as f64 / secs,
            "events_offered_per_s": g(&self.events_offered) as f64 / secs,
        })
    }

    /// Posts `body` (`size` events) and counts the answer.
    async fn post(&self, http: &reqwest::Client, url: &str, key: &str, body: Vec<u8>, size: u64) {
        self.events_offered.fetch_add(size, Ordering::Relaxed);
        match http.post(url).bearer_auth(key).body(body).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let slot = match status {
                    200..=299 => {
                        let last: Value =
                            text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
                        let n = last["summary"]["accepted"].as_u64().unwrap_or(0);
                        self.events_accepted.fetch_add(n, Ordering::Relaxed);
                        &self.ok
                    }
                    429 => &self.throttled_429,
                    503 => &self.unavailable_503,
                    500..=599 => &self.other_5xx,
                    _ => &self.other,
                };
                slot.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.transport.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A batch of `size` events of `org`, rendered once; [`Template::fresh`] gives a copy with new event ids (written
/// in place: rendering 10× the database's rate as JSON would take the load generator's CPU, not serve's).
struct Template {
    bytes: Vec<u8>,
    id_offsets: Vec<usize>,
}

impl Template {
    fn new(org: &str, size: u64) -> Template {
        let mut bytes = Vec::new();
        let mut id_offsets = Vec::new();
        for n in 0..size {
            let e = event(org, n);
            let line = format!("{e}\n");
            let id = e["event_id"].as_str().unwrap_or_default();
            if let Some(at) = line.find(id) {
                id_offsets.push(bytes.len() + at);
            }
            bytes.extend_from_slice(line.as_bytes());
        }
        Template { bytes, id_offsets }
    }

    fn fresh(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        for at in &self.id_offsets {
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut b[*at..*at + 36]);
        }
        b
    }
}

/// Peak RSS of serve while `work` runs, sampled every 250 ms.
async fn peak_rss_during(
    serve: &Serve,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<u64> {
    let mut peak = serve.rss().unwrap_or(0);
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => { r?; break; }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        peak = peak.max(serve.rss().unwrap_or(0));
    }
    Ok(peak.max(serve.rss().unwrap_or(0)))
}

/// Closed loop: `clients` tasks post batches of `size` for `secs`, each pausing `pause` between requests; returns
/// (peak RSS, counts).
async fn closed_loop(
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
            let template = Template::new(&org, size);
            while Instant::now() < deadline {
                counts.post(&http, &url, &key, template.fresh(), size).await;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
    let peak = peak_rss_during(serve, async {
        while let Some(r) = tasks.join_next().await {
            r?;
        }
        Ok(())
    })
    .await?;
    Ok((peak, counts))
}

/// Open loop: a batch of `size` every `size / rate` seconds for `secs`, each its own request whatever the earlier
/// ones are doing; returns (peak RSS, counts).
async fn open_loop(
    serve: &Serve,
    setup: &Setup,
    rate: f64,
    size: u64,
    secs: u64,
) -> anyhow::Result<(u64, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).pool_max_idle_per_host(MAX_OPEN).build()?;
    let url = format!("{}/v1/events:batch", serve.base);
    let templates: Vec<(Arc<Template>, String)> =
        setup.orgs.iter().map(|(org, key)| (Arc::new(Template::new(org, size)), key.clone())).collect();
    let interval = Duration::from_secs_f64(size as f64 / rate.max(1.0));
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN));
    let generator = async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut i = 0usize;
        while Instant::now() < deadline {
            tick.tick().await;
            let Ok(slot) = open.clone().try_acquire_owned() else {
                counts.not_sent.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (template, key) = templates[i % templates.len()].clone();
            i += 1;
            let (http, counts, url) = (http.clone(), counts.clone(), url.clone());
            tasks.spawn(async move {
                let body = template.fresh();
                counts.post(&http, &url, &key, body, size).await;
                drop(slot);
            });
            while let Some(r) = tasks.try_join_next() {
                r?;
            }
        }
        while let Some(r) = tasks.join_next().await {
            r?;
        }
        Ok(())
    };
    let peak = peak_rss_during(serve, generator).await?;
    Ok((peak, counts))
}

/// The overload group.
pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Measure>> {
    let bin = tokio::task::block_in_place(|| crate::soak::build_binary(!cfg!(debug_assertions)))?;
    let secs = if ctx.sizes.soak_minutes <= 2 { 20 } else { 60 };
    let setup = Setup::new(bin.clone(), "ovl", 4).await?;
    let serve = setup.serve(&[]).await?;
    let (normal_peak, normal) = closed_loop(&serve, &setup, 1, 500, Duration::from_millis(100), secs).await?;
    let normal_json = normal.json(secs as f64);
    progress(format!("overload: paced load peak RSS {:.1} MiB, {normal_json}", normal_peak as f64 / 1_048_576.0));
    let probe_secs = secs.min(20);
    let (probe_peak, probe) =
        closed_loop(&serve, &setup, PROBE_CLIENTS, BATCH as u64, Duration::ZERO, probe_secs).await?;
    let probe_json = probe.json(probe_secs as f64);
    let capacity = probe_json["events_accepted_per_s"].as_f64().unwrap_or(0.0);
    progress(format!(
        "overload: capacity {capacity:.0} events/s ({PROBE_CLIENTS} closed-loop clients; peak RSS {:.1} MiB), {probe_json}",
        probe_peak as f64 / 1_048_576.0
    ));
    if capacity <= 0.0 {
        bail!("the capacity probe stored nothing: {probe_json}");
    }
    let target = OVERLOAD_FACTOR * capacity;
    let (over_peak, over) = open_loop(&serve, &setup, target, BATCH as u64, secs).await?;
    let over_json = over.json(secs as f64);
    progress(format!(
        "overload: open loop at {target:.0} events/s offered, peak RSS {:.1} MiB, {over_json}",
        over_peak as f64 / 1_048_576.0
    ));
    drop(serve);
    let offered = over_json["events_offered_per_s"].as_f64().unwrap_or(0.0);
    let other_5xx = over.other_5xx.load(Ordering::Relaxed)
        + normal.other_5xx.load(Ordering::Relaxed)
        + probe.other_5xx.load(Ordering::Relaxed);
    let rss = Measure::ratio(
        "overload_rss_ratio",
        over_peak as f64,
        normal_peak as f64,
        "bytes",
        Some(Target::at_most(1.5)),
    )
    .note(format!(
        "peak VmRSS of audit-db serve: open-loop {BATCH}-event batches offered at {OVERLOAD_FACTOR}× the capacity a \
         closed-loop probe measured ÷ one client, 500-event batches every 100 ms; {secs} s each"
    ))
    .details(json!({
        "normal": normal_json, "probe": probe_json, "overload": over_json,
        "capacity_events_per_s": capacity, "target_offered_events_per_s": target,
        "offered_over_capacity": offered / capacity,
    }));
    let errors = Measure::new(
        "overload_other_5xx",
        other_5xx as f64,
        "requests",
        other_5xx as f64,
        f64::NAN,
        Some(Target::at_most(0.0)),
    )
    .note("answers with a 5xx other than 503 during the three phases (429/503 are the expected shedding)");

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
