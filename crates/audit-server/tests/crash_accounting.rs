//! Crash tests with acknowledged-event accounting (audit-testkit's `accounting`): a writer records every
//! acknowledgement it receives to a file; a fault hits mid-run; afterwards the checker holds the acknowledgements
//! against the database — acknowledged ⊆ stored, stored exactly once, every organisation's `seq` gap-free — and
//! the next checkpoint verifies clean.
//!
//! Faults: `kill -9` of `audit-db serve` during HTTP ingest; `kill -9` of `audit-db ingest` mid-file (then the same
//! file again); a PostgreSQL crash during library ingest — `pg_ctl stop -m immediate`, or `kill -9` of the postmaster
//! — then start; Redis killed during a read/write mix (answers stay fresh and correct); the archive directory
//! unwritable, or its file system full (ENOSPC on a tiny tmpfs), during retention (nothing dropped without its
//! archive, partitions stay attached, a later run with space archives everything).
//!
//! Timings come from a seed: `AUDIT_CHAOS_SEED` (printed by every run; set it to replay one) and
//! `AUDIT_CHAOS_TRIALS` trials per fault (default 1, fast). `cargo xtask chaos` runs many seeds.
//!
//! And `kill -9` of `audit-db serve` during HTTP ingest (then restarted; the client retries what was not
//! acknowledged).

#[path = "support/cli.rs"]
mod cli;
#[path = "support/raw_http.rs"]
mod raw_http;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_client::BatchItem;
use audit_core::{CacheTier, EventFilter};
use audit_server::app::App;
use audit_server::config::AuditConfig;
use audit_testkit::accounting::{self, AckLog, AckRecord, Seeded};
use audit_testkit::cluster::{kill_postmaster, start_after_crash, start_private_cluster};
use audit_testkit::redis::RedisServer;
use audit_testkit::{TestDb, sql};
use chrono::{SecondsFormat, TimeZone as _, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

/// The run's seed (`AUDIT_CHAOS_SEED`, else from the clock), printed so that a failure can be replayed, mixed with
/// the fault's name so each fault has its own schedule.
fn seeded(fault: &str) -> (u64, Seeded) {
    let seed = std::env::var("AUDIT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64);
    let mix = fault.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3));
    println!("chaos {fault}: AUDIT_CHAOS_SEED={seed}");
    (seed, Seeded::new(seed ^ mix))
}

fn trials() -> usize {
    std::env::var("AUDIT_CHAOS_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

/// `n` events over `orgs` organisations (and some for the shared log), each with its own id.
fn events(n: usize, orgs: usize, tag: &str) -> Vec<Value> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let org = if i % 11 == 0 { Value::Null } else { json!(format!("{tag}-org{}", i % orgs)) };
            json!({
                "event_id": Uuid::new_v4().to_string(), "action": format!("{tag}_{}", i % 5), "status": "success",
                "organization_id": org, "principal_id": format!("u{}", i % 97),
                "timestamp": (now - chrono::Duration::milliseconds(i as i64)).to_rfc3339_opts(SecondsFormat::Micros, true),
                "details": {"i": i},
            })
        })
        .collect()
}

fn ids(events: &[Value]) -> BTreeSet<Uuid> {
    events.iter().map(|e| e["event_id"].as_str().unwrap().parse().unwrap()).collect()
}

/// Acknowledgements of a batch report, for the ack log.
fn acks_of(batch: &[Value], report: &audit_client::BatchReport) -> Vec<AckRecord> {
    report
        .items
        .iter()
        .zip(batch)
        .filter_map(|(item, e)| match item {
            BatchItem::Ok(ack) => Some(AckRecord {
                event_id: ack.event_id(),
                org: e["organization_id"].as_str().map(str::to_string),
                seq: match ack {
                    audit_client::Ack::Stored { seq, .. } => Some(*seq),
                    _ => None,
                },
                commit_lsn: ack.commit_lsn().map(|l| l.to_string()),
            }),
            BatchItem::Rejected(_) => None,
        })
        .collect()
}

/// The next checkpoint, then a full verify, through the binary: both clean.
fn checkpoint_and_verify(url: &str, key: &std::path::Path) {
    let env = [("AUDIT_DB_SIGNING_KEY_FILE", key.to_str().unwrap())];
    cli::ok(&cli::run(url, &env, &["checkpoint"]), "checkpoint after the fault");
    let v = cli::run(url, &env, &["verify"]);
    cli::ok(&v, "verify after the fault");
}

fn keygen(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("keys");
    cli::ok(&cli::run_offline(&["keygen", "--out", out.to_str().unwrap()]), "keygen");
    out.join("signing.key")
}

// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ingest_mid_file_then_the_same_file_again_stores_every_line_once() {
    let (_, mut rng) = seeded("ingest-kill");
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    for trial in 0..trials() {
        let db = TestDb::create("crash_ingest").await;
        cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
        let batch = events(20_000, 7, &format!("t{trial}"));
        let sent = ids(&batch);
        let lines: Vec<String> = batch.iter().map(Value::to_string).collect();
        let file = cli::write_lines(dir.path(), &format!("events-{trial}.ndjson"), &lines);
        let pg = sql(&db.url).await;
        let stored = || async { pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get::<_, i64>(0) };

        // Kill once some lines are stored (and more are on their way), after a random extra delay.
        let mut child = cli::async_command(&["ingest", file.to_str().unwrap()]);
        child.env("DATABASE_URL", &db.url).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = child.spawn().unwrap();
        let started = Instant::now();
        while stored().await == 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "ingest stored nothing within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 1_200))).await;
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        let at_kill = stored().await;
        println!("trial {trial}: killed ({status}) with {at_kill} of {} lines stored", sent.len());

        // The same file again: every line is stored or a duplicate, nothing rejected.
        let again = cli::run(&db.url, &[], &["ingest", file.to_str().unwrap()]);
        cli::ok(&again, "re-run of the same file");
        let s = cli::summary(&again);
        assert_eq!(s["rejected"], 0, "{s}");
        assert_eq!(s["accepted"].as_u64().unwrap() + s["duplicates"].as_u64().unwrap(), sent.len() as u64, "{s}");
        assert_eq!(s["duplicates"].as_i64().unwrap(), at_kill, "what the killed run stored is found again: {s}");

        // The re-run's exit 0 acknowledges every line.
        let log = AckLog::open(dir.path().join(format!("acks-{trial}.ndjson"))).unwrap();
        let acks: Vec<AckRecord> = batch
            .iter()
            .map(|e| AckRecord {
                event_id: e["event_id"].as_str().unwrap().parse().unwrap(),
                org: e["organization_id"].as_str().map(str::to_string),
                seq: None,
                commit_lsn: s["commit_lsn"].as_str().map(str::to_string),
            })
            .collect();
        log.record(&acks).unwrap();
        let a = accounting::check(&pg, &AckLog::read(log.path()).unwrap(), Some(&sent)).await.unwrap();
        a.assert_clean("kill -9 of ingest");
        assert_eq!((a.acknowledged, a.stored_events, a.stored_rows), (sent.len(), sent.len(), sent.len()));
        checkpoint_and_verify(&db.url, &key);
        println!("trial {trial}: 0 lost, 0 duplicates of {} acknowledged", a.acknowledged);
    }
}

/// How PostgreSQL is crashed.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// `pg_ctl stop -m immediate` (the postmaster signals its children to quit at once).
    StopImmediate,
    /// `kill -9` of the postmaster: nothing of PostgreSQL runs any shutdown code; its backends notice on their own.
    KillPostmaster,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_during_library_ingest_loses_no_acknowledged_event() {
    postgres_crash_trials("postgres-crash", Crash::StopImmediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_postmaster_during_library_ingest_loses_no_acknowledged_event() {
    postgres_crash_trials("postmaster-kill", Crash::KillPostmaster).await;
}

async fn postgres_crash_trials(fault: &str, crash: Crash) {
    let (_, mut rng) = seeded(fault);
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let cluster = start_private_cluster().await.expect("a private cluster");
    for trial in 0..trials() {
        let database = format!("crash_pg_{trial}");
        sql(&cluster.url()).await.batch_execute(&format!("CREATE DATABASE {database}")).await.unwrap();
        let url = cluster.url_for(&database);
        let mut config = AuditConfig::default();
        config.database.url = Some(url.clone());
        config.database.connection_timeout = 1_000;
        config.database.query_timeout = 5_000;
        config.circuit_breaker.reset_timeout_ms = 500;
        config.ingest.outage_patience_ms = 60_000;
        let app = App::open(config).await.unwrap();
        app.migrate().await.unwrap();
        let client = app.client().await.unwrap();

        let all = events(6_000, 5, &format!("pg{trial}"));
        let sent = ids(&all);
        let log = Arc::new(AckLog::open(dir.path().join(format!("pg-acks-{trial}.ndjson"))).unwrap());
        // The load generator: batches of 100 in order, each retried (same ids) until acknowledged.
        let generator = {
            let (client, log, all) = (client.clone(), log.clone(), all.clone());
            tokio::spawn(async move {
                let mut retries = 0;
                for batch in all.chunks(100) {
                    let started = Instant::now();
                    loop {
                        match client.insert_batch(batch.to_vec()).await {
                            Ok(report) => {
                                assert_eq!(report.rejected(), 0);
                                log.record(&acks_of(batch, &report)).unwrap();
                                break;
                            }
                            Err(e) => {
                                assert!(started.elapsed() < Duration::from_secs(120), "no acknowledgement: {e}");
                                retries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                retries
            })
        };
        let pg = sql(&url).await;
        let started = Instant::now();
        while pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get::<_, i64>(0) == 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "nothing stored within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(pg);
        tokio::time::sleep(Duration::from_millis(rng.range(0, 500))).await;
        let acked_at_crash = AckLog::read(log.path()).unwrap().len();
        let down = Duration::from_millis(rng.range(100, 1_500));
        match crash {
            Crash::StopImmediate => {
                cluster.stop_immediate().await.expect("pg_ctl stop -m immediate");
                tokio::time::sleep(down).await;
                cluster.start().await.expect("PostgreSQL starts again (crash recovery)");
            }
            Crash::KillPostmaster => {
                let pid = kill_postmaster(&cluster).expect("kill -9 of the postmaster");
                println!("trial {trial}: killed postmaster {pid} with SIGKILL");
                tokio::time::sleep(down).await;
                let attempts = start_after_crash(&cluster, Duration::from_secs(60))
                    .await
                    .expect("PostgreSQL starts again after kill -9 (crash recovery)");
                println!("trial {trial}: started again after {attempts} attempt(s)");
            }
        }
        let retries = generator.await.expect("the generator finishes");

        let pg = sql(&url).await;
        let a = accounting::check(&pg, &AckLog::read(log.path()).unwrap(), Some(&sent)).await.unwrap();
        a.assert_clean(&format!("PostgreSQL crash ({crash:?})"));
        assert_eq!((a.acknowledged, a.stored_events), (sent.len(), sent.len()));
        checkpoint_and_verify(&url, &key);
        println!(
            "trial {trial}: crash after {acked_at_crash} acknowledged, down {} ms, {retries} batch retries; 0 lost, 0 \
             duplicates of {} acknowledged",
            down.as_millis(),
            a.acknowledged
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_a_read_write_mix_leaves_every_answer_fresh_and_correct() {
    let (_, mut rng) = seeded("redis-kill");
    for trial in 0..trials() {
        let db = TestDb::create("crash_redis").await;
        let redis = RedisServer::start().await;
        let mut config = AuditConfig::default();
        config.database.url = Some(db.url.clone());
        config.cache.redis_url = Some(redis.url());
        config.cache.key_prefix = format!("crash-{}:", Uuid::new_v4().simple());
        // The documented bound on another process's writes while Redis is unreachable (docs/caching.md); 0: exact.
        config.cache.local_staleness_ms = 0;
        config.circuit_breaker.failure_threshold = 3;
        config.circuit_breaker.reset_timeout_ms = 300;
        let app = App::open(config).await.unwrap();
        app.migrate().await.unwrap();
        // Two service instances sharing the database and Redis: one writes, both read.
        let writer = app.client().await.unwrap();
        let reader = app.client().await.unwrap();
        let pg = sql(&db.url).await;
        let kill_at = rng.range(3, 12);
        let back_at = kill_at + rng.range(3, 12);
        let mut acked: BTreeSet<Uuid> = BTreeSet::new();
        let (mut cached, mut answers) = (0, 0);
        for round in 0..30 {
            if round == kill_at {
                redis.kill();
            }
            if round == back_at {
                redis.restart().await;
            }
            let batch = events(10, 2, &format!("r{trial}"));
            let report = writer.insert_batch(batch.clone()).await.expect("writes do not need Redis");
            acked.extend(acks_of(&batch, &report).iter().map(|a| a.event_id));
            for org in [format!("r{trial}-org0"), format!("r{trial}-org1")] {
                let filter =
                    EventFilter { organization_id: Some(org.clone()), limit: Some(10_000), ..EventFilter::default() };
                let truth: BTreeSet<Uuid> = pg
                    .query("SELECT event_id FROM audit_log WHERE organization_id = $1", &[&org])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for (who, c) in [("writer", &writer), ("reader", &reader)] {
                    for _ in 0..2 {
                        let a = c.query(&filter).await.expect("reads do not need Redis");
                        let got: BTreeSet<Uuid> = a.page.events.iter().map(|e| e.event.event_id).collect();
                        assert_eq!(got, truth, "round {round}: {who}'s answer ({:?}) is not the database's", a.tier);
                        answers += 1;
                        cached += usize::from(a.tier != CacheTier::Db);
                    }
                }
            }
        }
        let a = accounting::check(
            &pg,
            &acked
                .iter()
                .map(|id| AckRecord { event_id: *id, org: None, seq: None, commit_lsn: None })
                .collect::<Vec<_>>(),
            None,
        )
        .await
        .unwrap();
        a.assert_clean("Redis killed");
        println!(
            "trial {trial}: Redis down rounds {kill_at}..{back_at}; {answers} answers all fresh ({cached} from cache)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_archive_during_retention_drops_nothing() {
    let (_, mut rng) = seeded("archive-unwritable");
    for trial in 0..trials() {
        let db = TestDb::create("crash_archive").await;
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let archive_s = archive.to_str().unwrap().to_string();
        let env: &[(&str, &str)] =
            &[("AUDIT_DB_ARCHIVE_DIR", &archive_s), ("AUDIT_DB_PARTITION_RETENTION_DAYS", "1000")];
        cli::ok(&cli::run(&db.url, env, &["migrate"]), "migrate");
        let months = rng.range(2, 6) as u32;
        let mut old = BTreeSet::new();
        let mut lines = Vec::new();
        for m in 1..=months {
            for i in 0..(3 + rng.range(0, 20) as u32) {
                let id = Uuid::new_v4();
                old.insert(id);
                let ts = Utc.with_ymd_and_hms(2019, m, 1 + i % 27, 10, 0, 0).unwrap();
                lines.push(json!({"event_id": id, "action": "legacy", "status": "success",
                    "timestamp": ts.to_rfc3339_opts(SecondsFormat::Micros, true), "organization_id": "acme",
                    "data_classification": "INTERNAL"}));
            }
        }
        let file = cli::write_lines(dir.path(), "old.ndjson", &lines);
        cli::ok(&cli::run(&db.url, env, &["ingest", file.to_str().unwrap()]), "ingest");
        let pg = sql(&db.url).await;
        let count = || async { pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get::<_, i64>(0) };
        assert_eq!(count().await, old.len() as i64);

        // Unwritable even for root: the archive path is a regular file (writes into it fail with ENOTDIR).
        std::fs::write(&archive, b"not a directory").unwrap();
        let o = cli::run(&db.url, env, &["partitions", "drop-expired"]);
        let out = format!("{}{}", cli::stdout(&o), cli::stderr(&o));
        assert_eq!(count().await, old.len() as i64, "rows dropped without an archive: {out}");
        let parts: i64 = pg
            .query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'audit_log_2019_%' AND relkind = 'r'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(parts, i64::from(months), "a 2019 partition disappeared: {out}");
        assert!(!o.status.success() || out.contains("failed"), "the run reports the failure: {out}");

        // Writable again: everything expired is archived, then dropped; the archive holds every dropped event.
        std::fs::remove_file(&archive).unwrap();
        cli::ok(&cli::run(&db.url, env, &["partitions", "drop-expired"]), "drop-expired with a writable archive");
        assert_eq!(count().await, 0);
        let archived = archived_event_ids(&archive);
        assert_eq!(archived, old, "the archive holds exactly the dropped events");
        println!("trial {trial}: {months} expired partitions, {} events: 0 dropped unarchived", old.len());
    }
}

/// A tiny tmpfs mounted at a temporary directory (root only; CI runs as root), unmounted on drop: a real file system
/// that runs out of space (ENOSPC), unlike a read-only or wrong-type path.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    /// Mounts a tmpfs of `bytes`; panics with the reason when mounting is not permitted (never a silent skip: the
    /// disk-full fault would then go untested).
    fn mount(bytes: u64) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "audit-db-enospc"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            o.status.success(),
            "the disk-full test needs `mount -t tmpfs` (run as root, or with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        TinyFs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until at most about `leave` bytes are free.
    fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let size = free_bytes(self.path()).saturating_sub(leave);
        let block = vec![0xA5u8; 64 * 1024];
        let mut written = 0u64;
        while written < size {
            let n = (size - written).min(block.len() as u64) as usize;
            if f.write_all(&block[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        f.sync_all().ok();
        filler
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

fn free_bytes(path: &std::path::Path) -> u64 {
    let o = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// Every file under `dir`, relative, except `skip`.
fn files_under(dir: &std::path::Path, skip: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != skip) {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_disk_during_retention_drops_nothing_and_a_later_run_archives_everything() {
    let (_, mut rng) = seeded("archive-full");
    for trial in 0..trials() {
        let db = TestDb::create("crash_enospc").await;
        let dir = tempfile::tempdir().unwrap();
        let fs = TinyFs::mount(8 * 1024 * 1024);
        let archive = fs.path().join("archive");
        let archive_s = archive.to_str().unwrap().to_string();
        let env: &[(&str, &str)] =
            &[("AUDIT_DB_ARCHIVE_DIR", &archive_s), ("AUDIT_DB_PARTITION_RETENTION_DAYS", "1000")];
        cli::ok(&cli::run(&db.url, env, &["migrate"]), "migrate");
        let months = rng.range(2, 5) as u32;
        let mut old = BTreeSet::new();
        let mut lines = Vec::new();
        for m in 1..=months {
            // Enough events that a month's archive (random ids: ~60 bytes per event compressed) does not fit.
            for i in 0..(1_500 + rng.range(0, 500) as u32) {
                let id = Uuid::new_v4();
                old.insert(id);
                let ts = Utc.with_ymd_and_hms(2019, m, 1 + i % 27, 10, 0, i % 60).unwrap();
                lines.push(json!({"event_id": id, "action": "legacy", "status": "success",
                    "timestamp": ts.to_rfc3339_opts(SecondsFormat::Micros, true), "organization_id": "acme",
                    "principal_id": Uuid::new_v4().to_string(), "data_classification": "INTERNAL"}));
            }
        }
        let file = cli::write_lines(dir.path(), "old.ndjson", &lines);
        cli::ok(&cli::run(&db.url, env, &["ingest", file.to_str().unwrap()]), "ingest");
        let pg = sql(&db.url).await;
        let count = || async { pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get::<_, i64>(0) };
        let attached = || async {
            pg.query_one(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'audit_log'::regclass AND c.relname LIKE 'audit_log_2019_%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        };
        assert_eq!(count().await, old.len() as i64);
        assert_eq!(attached().await, i64::from(months));

        // The archive's file system is full but for a few KiB: the archive write hits ENOSPC part-way.
        std::fs::create_dir_all(&archive).unwrap();
        let leave = rng.range(0, 24 * 1024);
        let filler = fs.fill_leaving(leave);
        let free_before = free_bytes(fs.path());
        let o = cli::run(&db.url, env, &["partitions", "drop-expired"]);
        let out = format!("{}{}", cli::stdout(&o), cli::stderr(&o));
        assert_eq!(count().await, old.len() as i64, "rows dropped without an archive: {out}");
        assert_eq!(attached().await, i64::from(months), "a 2019 partition is no longer attached: {out}");
        assert!(!o.status.success() || out.contains("failed"), "the run reports the failure: {out}");
        assert!(out.contains("No space left on device"), "the failure names ENOSPC: {out}");
        // Nothing half-written is left behind to hold the space a later run needs.
        let left = files_under(fs.path(), "filler");
        assert!(left.is_empty(), "a failed archive left files behind: {left:?}");
        assert!(free_bytes(fs.path()) + 8192 >= free_before, "the failed run kept space");
        // Reads still see every event (the partitions were put back).
        let visible: i64 =
            pg.query_one("SELECT count(*) FROM audit_log WHERE timestamp < '2020-01-01'", &[]).await.unwrap().get(0);
        assert_eq!(visible, old.len() as i64);

        // Space again: the next run archives every expired partition, then drops it.
        std::fs::remove_file(&filler).unwrap();
        cli::ok(&cli::run(&db.url, env, &["partitions", "drop-expired"]), "drop-expired with space");
        assert_eq!(count().await, 0);
        assert_eq!(attached().await, 0);
        let archived = archived_event_ids(&archive);
        assert_eq!(archived, old, "the archive holds exactly the dropped events");
        println!(
            "trial {trial}: {months} expired partitions, {} events, {leave} bytes free: ENOSPC, 0 dropped unarchived, \
             all re-attached, nothing left behind; later run archived all",
            old.len()
        );
    }
}

/// Reads a gzip file by running `gzip -dc` (no gzip crate in this crate's dependencies).
fn flate2_gz(path: &std::path::Path) -> std::io::Cursor<Vec<u8>> {
    let o = std::process::Command::new("gzip").arg("-dc").arg(path).output().expect("gzip runs");
    assert!(o.status.success());
    std::io::Cursor::new(o.stdout)
}

// ---------------------------------------------------------------------------------------------------------------

/// `POST http://127.0.0.1:port{path}` with a bearer key and a JSON body (HTTP/1.1, `Connection: close`): status and
/// body. Any transport failure (refused, reset, cut mid-answer) is an error: not acknowledged.
async fn http_post(port: u16, path: &str, key: &str, body: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = length
        && body.len() != n
    {
        return Err(std::io::Error::other(format!("answer cut: {} of {n} bytes", body.len())));
    }
    Ok((code, body.to_string()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_serve(url: &str, port: u16) -> tokio::process::Child {
    let mut c = cli::async_command(&["serve"]);
    c.env("DATABASE_URL", url)
        .env("AUDIT_DB_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().expect("serve starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_during_http_ingest_loses_no_acknowledged_event() {
    let (_, mut rng) = seeded("serve-kill");
    let dir = tempfile::tempdir().unwrap();
    let key_file = keygen(dir.path());
    for trial in 0..trials() {
        let db = TestDb::create("crash_serve").await;
        cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
        let org = format!("serve{trial}");
        let created = cli::run(&db.url, &[], &["api-keys", "create", "--org", &org, "--scopes", "ingest"]);
        cli::ok(&created, "api-keys create");
        let key = cli::stdout(&created).trim().to_string();
        let port = free_port();
        let mut serve = start_serve(&db.url, port);

        let all: Vec<Value> = events(4_000, 1, "s")
            .into_iter()
            .map(|mut e| {
                e["organization_id"] = json!(org);
                e
            })
            .collect();
        let sent = ids(&all);
        let log = Arc::new(AckLog::open(dir.path().join(format!("serve-acks-{trial}.ndjson"))).unwrap());
        // The client: batches of 100 as JSON arrays, each re-sent (same ids) until a 201 acknowledges it.
        let generator = {
            let (log, all, key, org) = (log.clone(), all.clone(), key.clone(), org.clone());
            tokio::spawn(async move {
                let mut retries = 0;
                for batch in all.chunks(100) {
                    let body = Value::Array(batch.to_vec()).to_string();
                    let started = Instant::now();
                    loop {
                        match http_post(port, "/v1/events", &key, &body).await {
                            Ok((201, answer)) => {
                                let v: Value = serde_json::from_str(&answer).expect("a 201 answer is JSON");
                                let items = v["items"].as_array().expect("items");
                                assert_eq!(items.len(), batch.len(), "{answer}");
                                let acks: Vec<AckRecord> = items
                                    .iter()
                                    .map(|i| AckRecord {
                                        event_id: i["event_id"].as_str().unwrap().parse().unwrap(),
                                        org: Some(org.clone()),
                                        seq: i["seq"].as_i64(),
                                        commit_lsn: v["commit_lsn"].as_str().map(str::to_string),
                                    })
                                    .collect();
                                log.record(&acks).unwrap();
                                break;
                            }
                            other => {
                                assert!(
                                    started.elapsed() < Duration::from_secs(120),
                                    "no acknowledgement within 120 s: {other:?}"
                                );
                                if let Ok((code, _)) = &other {
                                    assert!(*code == 503 || *code == 429 || *code == 0, "not retryable: {other:?}");
                                }
                                retries += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                retries
            })
        };
        // Kill once something is acknowledged, after a seeded delay; restart on the same port.
        let started = Instant::now();
        while AckLog::read(log.path()).unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "nothing acknowledged within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 1_500))).await;
        serve.start_kill().unwrap();
        let _ = serve.wait().await;
        let acked_at_kill = AckLog::read(log.path()).unwrap().len();
        tokio::time::sleep(Duration::from_millis(rng.range(50, 800))).await;
        let mut serve = start_serve(&db.url, port);
        let retries = generator.await.expect("the client finishes");
        serve.start_kill().unwrap();
        let _ = serve.wait().await;

        let pg = sql(&db.url).await;
        let a = accounting::check(&pg, &AckLog::read(log.path()).unwrap(), Some(&sent)).await.unwrap();
        a.assert_clean("kill -9 of serve");
        assert_eq!((a.acknowledged, a.stored_events), (sent.len(), sent.len()));
        checkpoint_and_verify(&db.url, &key_file);
        println!(
            "trial {trial}: serve killed after {acked_at_kill} acknowledged, {retries} retried requests; 0 lost, 0 \
             duplicates of {} acknowledged",
            a.acknowledged
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------

/// `audit-db serve` with extra environment, waited for until `/ready` answers 200.
async fn start_serve_ready(url: &str, port: u16, env: &[(&str, String)]) -> tokio::process::Child {
    let mut c = cli::async_command(&["serve"]);
    c.env("DATABASE_URL", url)
        .env("AUDIT_DB_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("serve starts");
    let started = Instant::now();
    loop {
        let r = raw_http::send(port, &raw_http::request("GET", "/ready", &[], b""), Duration::from_secs(5)).await;
        if r.is_ok_and(|a| a.status == 200) {
            return child;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "serve not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a gauge without labels in a Prometheus scrape.
fn gauge(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The in-flight body budget under a flood: 48 clients post NDJSON batches back to back through a budget that holds
/// a few of them. Those whose bytes do not fit get 429 + `Retry-After` + a problem naming the budget, before their
/// body is buffered; every 2xx-acknowledged event is stored exactly once, nothing of a refused request is stored,
/// the budget gauge never exceeds the budget, and serve's RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_body_budget_is_refused_with_429_and_every_acknowledged_event_is_stored_once() {
    const BUDGET: u64 = 2 * 1024 * 1024;
    const CLIENTS: usize = 48;
    const EVENTS_PER_BATCH: usize = 800;
    let db = TestDb::create("overload_budget").await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let created = cli::run(&db.url, &[], &["api-keys", "create", "--org", "flood", "--scopes", "ingest"]);
    cli::ok(&created, "api-keys create");
    let key = cli::stdout(&created).trim().to_string();
    let port = free_port();
    let serve = start_serve_ready(
        &db.url,
        port,
        &[
            ("AUDIT_DB_API_INFLIGHT_BYTES", BUDGET.to_string()),
            ("AUDIT_DB_API_BODY_LIMIT", (1024 * 1024).to_string()),
            ("AUDIT_DB_AUDIT_READS", "false".into()),
        ],
    )
    .await;
    let pid = serve.id().expect("serve's pid");
    let idle_rss = raw_http::rss(pid).unwrap();

    #[derive(Default)]
    struct Tally {
        acks: Vec<AckRecord>,
        acked_requests: BTreeSet<Uuid>,
        refused: BTreeSet<Uuid>,
        ok: usize,
        throttled: usize,
        other: Vec<String>,
    }
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (tally, stop, key) = (tally.clone(), stop.clone(), key.clone());
        clients.spawn(async move {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = events(EVENTS_PER_BATCH, 1, &format!("c{c}r{round}"));
                round += 1;
                let batch_ids = ids(&batch);
                let body: String = batch
                    .iter()
                    .map(|e| {
                        let mut e = e.clone();
                        e["organization_id"] = json!("flood");
                        format!("{e}\n")
                    })
                    .collect();
                let head = vec![
                    format!("Authorization: Bearer {key}").into_bytes(),
                    b"Content-Type: application/x-ndjson".to_vec(),
                    format!("Content-Length: {}", body.len()).into_bytes(),
                ];
                let req = raw_http::request("POST", "/v1/events:batch", &head, body.as_bytes());
                let a = match raw_http::send(port, &req, Duration::from_secs(120)).await {
                    Ok(a) => a,
                    Err(e) => {
                        tally.lock().unwrap().other.push(format!("transport: {e}"));
                        continue;
                    }
                };
                {
                    let mut t = tally.lock().unwrap();
                    match a.status {
                        200 => {
                            t.ok += 1;
                            let text = a.text();
                            let mut n = 0;
                            for l in text.lines() {
                                let v: Value = serde_json::from_str(l).expect("a result line is JSON");
                                if v.get("summary").is_some() || v.get("error").is_some() && v.get("line").is_none() {
                                    continue;
                                }
                                assert!(v["result"] == "stored" || v["result"] == "duplicate", "{l}");
                                n += 1;
                                t.acks.push(AckRecord {
                                    event_id: v["event_id"].as_str().unwrap().parse().unwrap(),
                                    org: Some("flood".into()),
                                    seq: v["seq"].as_i64(),
                                    commit_lsn: v["commit_lsn"].as_str().map(str::to_string),
                                });
                            }
                            assert_eq!(n, EVENTS_PER_BATCH, "every line of a 200 batch is acknowledged: {text}");
                            t.acked_requests.extend(batch_ids);
                        }
                        429 => {
                            t.throttled += 1;
                            assert!(a.header("retry-after").is_some(), "429 without Retry-After: {a:?}");
                            assert_eq!(a.header("content-type"), Some("application/problem+json"));
                            let p: Value = serde_json::from_slice(&a.body).expect("a problem body");
                            assert!(
                                p["detail"].as_str().unwrap().contains("api.inflightBodyBytes"),
                                "the refusal names the budget: {p}"
                            );
                            t.refused.extend(batch_ids);
                        }
                        other => t.other.push(format!("{other}: {}", a.text())),
                    }
                }
                if a.status == 429 {
                    // An impatient client, but not a busy loop on a 2-core machine.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    // Sample the budget gauge and serve's RSS while the flood runs.
    let (mut peak_rss, mut peak_gauge, mut samples) = (idle_rss, 0f64, 0);
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_secs(20) {
        if let Ok(a) =
            raw_http::send(port, &raw_http::request("GET", "/metrics", &[], b""), Duration::from_secs(10)).await
            && let Some(g) = gauge(&a.text(), "audit_db_http_inflight_body_bytes")
        {
            peak_gauge = peak_gauge.max(g);
            samples += 1;
        }
        peak_rss = peak_rss.max(raw_http::rss(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(r) = clients.join_next().await {
        r.expect("a client panicked");
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let mib = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "overload: {} × 200 ({} events acknowledged), {} × 429, other {:?}; budget gauge peak {peak_gauge} of {BUDGET} \
         ({samples} scrapes); RSS idle {:.1} MiB, peak {:.1} MiB",
        t.ok,
        t.acks.len(),
        t.throttled,
        t.other,
        mib(idle_rss),
        mib(peak_rss)
    );
    assert!(t.other.is_empty(), "only 200 and 429 answers: {:?}", t.other);
    assert!(t.throttled > 0, "a flood beyond the budget gets 429s");
    assert!(t.ok > 0, "the flood still makes progress");
    assert!(samples > 0 && peak_gauge <= BUDGET as f64, "the budget gauge stays within the budget: {peak_gauge}");
    // The budget bounds the bodies (and their parsed forms) in flight: a few times the budget, never the flood.
    assert!(
        peak_rss < idle_rss + 24 * BUDGET,
        "serve's RSS grew from {:.1} to {:.1} MiB under a {:.0} MiB budget",
        mib(idle_rss),
        mib(peak_rss),
        mib(BUDGET)
    );

    let pg = sql(&db.url).await;
    let a = accounting::check(&pg, &t.acks, Some(&t.acked_requests)).await.unwrap();
    a.assert_clean("flood beyond the body budget");
    assert_eq!(a.stored_unacknowledged, 0, "nothing unacknowledged is stored (refused requests write nothing)");
    assert_eq!((a.acknowledged, a.stored_events, a.stored_rows), (t.acks.len(), t.acks.len(), t.acks.len()));
    let refused: Vec<Uuid> = t.refused.iter().copied().collect();
    let leaked: i64 =
        pg.query_one("SELECT count(*) FROM audit_log WHERE event_id = ANY($1)", &[&refused]).await.unwrap().get(0);
    assert_eq!(leaked, 0, "events of 429-refused requests were stored");
    drop(serve);
}

/// The event ids in every archive file of `dir`, failing on an id archived twice.
fn archived_event_ids(dir: &std::path::Path) -> BTreeSet<Uuid> {
    let mut archived = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gz") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2_gz(&path), &mut text).unwrap();
            for l in text.lines() {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(archived.insert(v["event_id"].as_str().unwrap().parse::<Uuid>().unwrap()), "twice: {l}");
            }
        }
    }
    archived
}
