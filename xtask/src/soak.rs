//! `cargo xtask soak --minutes M [--rate R]`: `audit-db serve` under a mixed HTTP load for M minutes.
//!
//! A fresh database, the real binary (built by cargo like `chaos` builds its tests, so a long run and the suite
//! exercise the same program), and a load of NDJSON batch ingest, single inserts, queries, proofs of events a
//! checkpoint already covers, `audit-db checkpoint` every 30 s and `audit-db partitions maintain` every 2 minutes.
//! serve's resident memory (`VmRSS` of `/proc/PID/status`) is sampled every 2 s. Per minute: p50/p99 latency per
//! kind, errors (non-2xx other than 429) and 429s apart, RSS. At the end: RSS growth after warm-up and the
//! accounting check of audit-testkit (every acknowledged event stored exactly once, seq gap-free, `verify` clean).
//! The same pieces ([`Serve`], [`Setup`], [`run`]) serve the `overload` bench group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use audit_testkit::TestDb;
use audit_testkit::accounting::{self, AckLog, AckRecord};
use clap::Args;
use serde_json::{Value, json};
use uuid::Uuid;

/// Arguments of `cargo xtask soak`.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Events per second offered through `POST /v1/events:batch` (single inserts and reads come on top).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Use the release build of audit-db (default: the debug build, as `cargo xtask chaos` uses).
    #[arg(long)]
    release: bool,
    /// Leave out `GET /v1/proofs/{id}` (to tell whether memory growth comes from the proof path).
    #[arg(long)]
    no_proofs: bool,
}

/// The request kinds of the mixed load.
pub(crate) const KINDS: [&str; 4] = ["batch", "single", "query", "proof"];

/// Builds `audit-db` with cargo and returns the executable's path.
pub(crate) fn build_binary(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::workspace_root()).args([
        "build",
        "-p",
        "audit-server",
        "--bin",
        "audit-db",
        "--message-format=json",
    ]);
    if release {
        c.arg("--release");
    }
    let out = c.stderr(Stdio::inherit()).output().context("running cargo build")?;
    if !out.status.success() {
        bail!("building audit-db failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "audit-db"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not name the audit-db executable")
}

/// `audit-db args…` with the configuration variables of this shell removed, so a developer's environment cannot
/// change what is measured.
fn command(bin: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    for (k, _) in audit_server::config::ENVIRONMENT {
        c.env_remove(k);
    }
    c.env_remove("AUDIT_DB_CONFIG").env_remove("RUST_LOG").env("LOG_LEVEL", "warn").env("DATABASE_URL", url);
    c
}

/// Runs `audit-db args…` to completion; its stdout, or an error with its stderr.
fn run_cli(bin: &Path, url: &str, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<String> {
    let mut c = command(bin, url, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().with_context(|| format!("running audit-db {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("audit-db {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh, migrated database with a signing key and one ingest+query+verify API key per organisation.
pub(crate) struct Setup {
    /// The database (dropped with this value).
    pub db: TestDb,
    /// The audit-db executable.
    pub bin: PathBuf,
    /// Holds the signing key.
    pub dir: tempfile::TempDir,
    /// `AUDIT_DB_SIGNING_KEY_FILE`.
    pub key_file: PathBuf,
    /// (organisation, API key).
    pub orgs: Vec<(String, String)>,
}

impl Setup {
    /// Creates the database, migrates it, makes the signing key and the API keys.
    pub(crate) async fn new(bin: PathBuf, prefix: &str, orgs: usize) -> anyhow::Result<Setup> {
        let db = TestDb::try_create(prefix).await?;
        let dir = tempfile::tempdir()?;
        run_cli(&bin, &db.url, &[], &["migrate"])?;
        let keys = dir.path().join("keys");
        run_cli(&bin, &db.url, &[], &["keygen", "--out", keys.to_str().context("temp path")?])?;
        let key_file = keys.join("signing.key");
        let mut out = Vec::new();
        for i in 0..orgs {
            let org = format!("{prefix}{i}");
            let created = run_cli(
                &bin,
                &db.url,
                &[],
                &["api-keys", "create", "--org", &org, "--scopes", "ingest,query,verify", "--format", "json"],
            )?;
            let v: Value = serde_json::from_str(created.trim()).context("api-keys create --format json")?;
            out.push((org, v["key"].as_str().context("api-keys create: no key")?.to_string()));
        }
        Ok(Setup { db, bin, dir, key_file, orgs: out })
    }

    /// Runs `audit-db args…` against this database with the signing key.
    pub(crate) fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let key = self.key_file.to_str().context("key path")?;
        run_cli(&self.bin, &self.db.url, &[("AUDIT_DB_SIGNING_KEY_FILE", key)], args)
    }

    /// Starts `audit-db serve` on a free local port and waits until `/health` answers.
    pub(crate) async fn serve(&self, env: &[(&str, &str)]) -> anyhow::Result<Serve> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut c = command(&self.bin, &self.db.url, &["serve"]);
        c.env("AUDIT_DB_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDIT_DB_SIGNING_KEY_FILE", &self.key_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().context("starting audit-db serve")?;
        let serve = Serve { child, base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/health", serve.base)).send().await
                && r.status().is_success()
            {
                return Ok(serve);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("audit-db serve did not answer /health within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A running `audit-db serve` (killed when dropped).
pub(crate) struct Serve {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Serve {
    /// serve's resident set in bytes (`VmRSS`), or `None` once it has exited.
    pub(crate) fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    }

    /// Whether serve is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One event of organisation `org` as the service accepts it.
pub(crate) fn event(org: &str, i: u64) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(), "action": format!("soak_{}", i % 7), "status": "success",
        "organization_id": org, "principal_id": format!("u{}", i % 211), "target_resource_type": "record",
        "target_resource_id": format!("r{}", i % 1009),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "details": {"i": i, "note": "soak"},
    })
}

/// What one minute saw.
#[derive(Debug, Default, Clone)]
struct Minute {
    latency_ms: BTreeMap<&'static str, Vec<f64>>,
    ok: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    throttled: BTreeMap<&'static str, u64>,
    rss: Vec<u64>,
    events_acked: u64,
    first_error: Option<String>,
}

/// Shared recorder of the load tasks.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    minutes: Arc<Mutex<Vec<Minute>>>,
}

impl Recorder {
    fn with<R>(&self, f: impl FnOnce(&mut Minute) -> R) -> R {
        let i = (self.start.elapsed().as_secs() / 60) as usize;
        let mut m = self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while m.len() <= i {
            m.push(Minute::default());
        }
        f(&mut m[i])
    }

    /// Records one answer: 2xx → latency; 429/503 → throttled; anything else → error.
    fn answer(&self, kind: &'static str, status: u16, ms: f64, what: impl FnOnce() -> String) {
        self.with(|m| match status {
            200..=299 => {
                m.latency_ms.entry(kind).or_default().push(ms);
                *m.ok.entry(kind).or_default() += 1;
            }
            429 => *m.throttled.entry(kind).or_default() += 1,
            _ => {
                *m.errors.entry(kind).or_default() += 1;
                if m.first_error.is_none() {
                    m.first_error = Some(format!("{kind}: {status}: {}", what()));
                }
            }
        });
    }
}

/// Parameters of one soak.
#[derive(Debug, Clone)]
pub(crate) struct SoakParams {
    /// Length of the load.
    pub minutes: u64,
    /// Batch-ingest events per second.
    pub rate: u64,
    /// Checkpoint every.
    pub checkpoint_every: Duration,
    /// `partitions maintain` every.
    pub maintain_every: Duration,
    /// Whether proofs are requested.
    pub proofs: bool,
}

/// Sends `req`; (status, body, milliseconds). A transport error is status 0.
async fn timed(req: reqwest::RequestBuilder) -> (u16, String, f64) {
    let t = Instant::now();
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (status, body, t.elapsed().as_secs_f64() * 1e3)
        }
        Err(e) => (0, e.to_string(), t.elapsed().as_secs_f64() * 1e3),
    }
}

/// Runs the soak; returns the JSON summary (its `"clean"` says whether accounting and verify passed and no
/// unexpected error was answered).
pub(crate) async fn run(bin: PathBuf, p: &SoakParams) -> anyhow::Result<Value> {
    let setup = Setup::new(bin, "soak", 3).await?;
    let mut serve = setup.serve(&[]).await?;
    let base = serve.base.clone();
    let log = Arc::new(AckLog::open(setup.dir.path().join("acks.ndjson"))?);
    let rec = Recorder { start: Instant::now(), minutes: Arc::default() };
    let deadline = rec.start + Duration::from_secs(p.minutes * 60);
    let http = reqwest::Client::builder().pool_max_idle_per_host(32).timeout(Duration::from_secs(60)).build()?;
    // Events a checkpoint already covers (their proofs must exist): acknowledged before the last checkpoint began.
    let acked: Arc<Mutex<Vec<(Uuid, String)>>> = Arc::default();
    let provable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();

    // Batch ingest: one batch of 100 NDJSON lines every 100/rate seconds, organisations in turn; a 429 is retried
    // with the same ids after its Retry-After.
    {
        let (http, base, rec, log, acked, orgs) =
            (http.clone(), base.clone(), rec.clone(), log.clone(), acked.clone(), setup.orgs.clone());
        let period = Duration::from_secs_f64(100.0 / p.rate.max(1) as f64);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let (org, key) = &orgs[(i / 100) as usize % orgs.len()];
                let events: Vec<Value> = (i..i + 100).map(|n| event(org, n)).collect();
                i += 100;
                let body: String = events.iter().map(|e| format!("{e}\n")).collect();
                loop {
                    let req = http.post(format!("{base}/v1/events:batch")).bearer_auth(key).body(body.clone());
                    let (status, text, ms) = timed(req).await;
                    rec.answer("batch", status, ms, || text.chars().take(300).collect());
                    if status == 429 || status == 503 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    if status == 200 {
                        let mut acks = Vec::new();
                        for line in text.lines() {
                            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
                            if v["result"] == "rejected" {
                                rec.answer("batch", 422, 0.0, || line.chars().take(300).collect());
                            }
                            if v["result"] == "stored"
                                && let Some(n) = v["line"].as_u64()
                                && let Some(e) = events.get(n as usize - 1)
                            {
                                let id: Uuid = e["event_id"].as_str().unwrap_or_default().parse().unwrap_or_default();
                                acks.push(AckRecord {
                                    event_id: id,
                                    org: Some(org.clone()),
                                    seq: v["seq"].as_i64(),
                                    commit_lsn: None,
                                });
                            }
                        }
                        rec.with(|m| m.events_acked += acks.len() as u64);
                        let mut a = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        a.extend(acks.iter().map(|x| (x.event_id, org.clone())));
                        drop(a);
                        if let Err(e) = log.record(&acks) {
                            rec.answer("batch", 599, 0.0, || format!("ack log: {e}"));
                        }
                    }
                    break;
                }
            }
        });
    }
    // Single inserts (a one-element array through POST /v1/events), 10 per second.
    {
        let (http, base, rec, log, orgs) = (http.clone(), base.clone(), rec.clone(), log.clone(), setup.orgs.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut i = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let (org, key) = &orgs[i as usize % orgs.len()];
                let body = Value::Array(vec![event(org, i)]).to_string();
                i += 1;
                let req = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body);
                let (status, text, ms) = timed(req).await;
                let status = if status == 207 { 422 } else { status };
                rec.answer("single", status, ms, || text.chars().take(300).collect());
                if status == 201
                    && let Ok(v) = serde_json::from_str::<Value>(&text)
                {
                    let acks: Vec<AckRecord> = v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|it| {
                            Some(AckRecord {
                                event_id: it["event_id"].as_str()?.parse().ok()?,
                                org: Some(org.clone()),
                                seq: it["seq"].as_i64(),
                                commit_lsn: v["commit_lsn"].as_str().map(str::to_string),
                            })
                        })
                        .collect();
                    rec.with(|m| m.events_acked += acks.len() as u64);
                    if let Err(e) = log.record(&acks) {
                        rec.answer("single", 599, 0.0, || format!("ack log: {e}"));
                    }
                }
            }
        });
    }
    // Queries: a page of an organisation's newest events, 20 per second.
    {
        let (http, base, rec, orgs) = (http.clone(), base.clone(), rec.clone(), setup.orgs.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut i = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let (org, key) = &orgs[i % orgs.len()];
                let filter = if i.is_multiple_of(3) { format!("&action=soak_{}", i % 7) } else { String::new() };
                i += 1;
                let req = http.get(format!("{base}/v1/events?org={org}&limit=50{filter}")).bearer_auth(key);
                let (status, text, ms) = timed(req).await;
                rec.answer("query", status, ms, || text.chars().take(300).collect());
            }
        });
    }
    // Proofs of events acknowledged before the last checkpoint began, 5 per second.
    {
        let with_proofs = p.proofs;
        let (http, base, rec, acked, provable, orgs) =
            (http.clone(), base.clone(), rec.clone(), acked.clone(), provable.clone(), setup.orgs.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut i = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let n = provable.load(std::sync::atomic::Ordering::Relaxed);
                if n == 0 || !with_proofs {
                    continue;
                }
                let pick = {
                    let a = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    a.get((i.wrapping_mul(7919)) % n).cloned()
                };
                i += 1;
                let Some((id, org)) = pick else { continue };
                let Some((_, key)) = orgs.iter().find(|(o, _)| *o == org) else { continue };
                let req = http.get(format!("{base}/v1/proofs/{id}")).bearer_auth(key);
                let (status, text, ms) = timed(req).await;
                rec.answer("proof", status, ms, || format!("{id}: {}", text.chars().take(300).collect::<String>()));
            }
        });
    }

    // This task: RSS every 2 s, checkpoints and partition maintenance on their schedules.
    let mut last_checkpoint = Instant::now();
    let mut last_maintain = Instant::now();
    let mut maintenance_errors = Vec::new();
    let mut checkpoints = 0u32;
    let mut maintains = 0u32;
    let mut last_minute_printed = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if !serve.alive() {
            bail!("audit-db serve exited during the soak");
        }
        if let Some(rss) = serve.rss() {
            rec.with(|m| m.rss.push(rss));
        }
        if last_checkpoint.elapsed() >= p.checkpoint_every {
            last_checkpoint = Instant::now();
            let covered = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
            let setup_ref = &setup;
            match tokio::task::block_in_place(|| setup_ref.cli(&["checkpoint"])) {
                Ok(_) => {
                    checkpoints += 1;
                    provable.store(covered, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => maintenance_errors.push(format!("checkpoint: {e:#}")),
            }
        }
        if last_maintain.elapsed() >= p.maintain_every {
            last_maintain = Instant::now();
            let setup_ref = &setup;
            match tokio::task::block_in_place(|| setup_ref.cli(&["partitions", "maintain"])) {
                Ok(_) => maintains += 1,
                Err(e) => maintenance_errors.push(format!("partitions maintain: {e:#}")),
            }
        }
        let now_minute = (rec.start.elapsed().as_secs() / 60) as usize;
        if now_minute > last_minute_printed {
            let m = rec.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(done) = m.get(last_minute_printed) {
                eprintln!("soak: {}", minute_json(last_minute_printed + 1, done));
                if let Some(e) = &done.first_error {
                    eprintln!("soak: first error of minute {}: {e}", last_minute_printed + 1);
                }
            }
            last_minute_printed = now_minute;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a load task")?;
    }
    let peak_rss_end = serve.rss();
    drop(serve);

    // Accounting: everything acknowledged stored exactly once, seq gap-free, then a checkpoint and verify.
    let pg = crate::bench::env::connect(&setup.db.url).await?;
    let acks = AckLog::read(log.path())?;
    let a = accounting::check(&pg, &acks, None).await?;
    let problems = a.problems();
    let verify = setup.cli(&["checkpoint"]).and_then(|_| setup.cli(&["verify"]));

    let minutes = rec.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let per_minute: Vec<Value> =
        minutes.iter().enumerate().take(p.minutes as usize).map(|(i, m)| minute_json(i + 1, m)).collect();
    let growth = rss_growth_pct(&minutes[..minutes.len().min(p.minutes as usize)]);
    let total = |f: fn(&Minute) -> &BTreeMap<&'static str, u64>| -> u64 {
        minutes.iter().map(|m| f(m).values().sum::<u64>()).sum()
    };
    let errors = total(|m| &m.errors);
    let first_error = minutes.iter().find_map(|m| m.first_error.clone());
    let p99_of = |m: Option<&Minute>| {
        m.and_then(|m| m.latency_ms.get("batch")).map(|v| crate::bench::measure::percentile(v, 99.0))
    };
    let clean = problems.is_empty() && verify.is_ok() && errors == 0 && maintenance_errors.is_empty();
    Ok(json!({
        "minutes": p.minutes,
        "rate_events_per_s": p.rate,
        "per_minute": per_minute,
        "rss_growth_pct": growth,
        "rss_end_bytes": peak_rss_end,
        "batch_p99_ms_first_minute": p99_of(minutes.first()),
        "batch_p99_ms_last_minute": p99_of(minutes.get(p.minutes.saturating_sub(1) as usize)),
        "requests_ok": total(|m| &m.ok),
        "errors": errors,
        "first_error": first_error,
        "throttled_429": total(|m| &m.throttled),
        "checkpoints": checkpoints,
        "partition_maintenance_runs": maintains,
        "maintenance_errors": maintenance_errors,
        "accounting": {
            "acknowledged": a.acknowledged,
            "stored_rows": a.stored_rows,
            "stored_events": a.stored_events,
            "lost": a.lost.len(),
            "duplicates": a.duplicates.len(),
            "seq_gaps": a.seq_gaps.len(),
            "problems": problems,
        },
        "verify": match &verify { Ok(_) => "clean".to_string(), Err(e) => format!("{e:#}") },
        "clean": clean,
    }))
}

/// `(max RSS of the last minute − max RSS of minute 1) ÷ max RSS of minute 1`, in percent: minute 1 is the
/// warm-up (pools, caches, allocator arenas fill), the growth after it is what a leak would show.
fn rss_growth_pct(minutes: &[Minute]) -> Option<f64> {
    let peak = |m: &Minute| m.rss.iter().copied().max();
    let first = peak(minutes.first()?)? as f64;
    let last = peak(minutes.last()?)? as f64;
    (minutes.len() >= 2 && first > 0.0).then(|| (last - first) / first * 100.0)
}

/// One minute's figures as JSON.
fn minute_json(n: usize, m: &Minute) -> Value {
    let mut kinds = serde_json::Map::new();
    for kind in KINDS {
        let lat = m.latency_ms.get(kind).cloned().unwrap_or_default();
        kinds.insert(
            kind.to_string(),
            json!({
                "ok": m.ok.get(kind).copied().unwrap_or(0),
                "p50_ms": (!lat.is_empty()).then(|| crate::bench::measure::percentile(&lat, 50.0)),
                "p99_ms": (!lat.is_empty()).then(|| crate::bench::measure::percentile(&lat, 99.0)),
                "errors": m.errors.get(kind).copied().unwrap_or(0),
                "throttled_429": m.throttled.get(kind).copied().unwrap_or(0),
            }),
        );
    }
    json!({
        "minute": n,
        "events_acknowledged": m.events_acked,
        "rss_max_mib": m.rss.iter().copied().max().map(|b| b as f64 / 1_048_576.0),
        "kinds": kinds,
    })
}

/// `cargo xtask soak`.
pub(crate) fn soak(args: &SoakArgs) -> anyhow::Result<ExitCode> {
    if args.minutes < 2 {
        bail!("--minutes must be at least 2 (minute 1 is the warm-up the RSS growth is measured from)");
    }
    let bin = build_binary(args.release)?;
    eprintln!("soak: {} for {} minutes at {} events/s", bin.display(), args.minutes, args.rate);
    let rt = crate::multi_thread()?;
    let params = SoakParams {
        minutes: args.minutes,
        rate: args.rate,
        checkpoint_every: Duration::from_secs(30),
        maintain_every: Duration::from_secs(120),
        proofs: !args.no_proofs,
    };
    let summary = rt.block_on(run(bin, &params))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(if summary["clean"] == true { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
