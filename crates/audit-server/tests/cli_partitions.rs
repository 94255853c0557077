//! The partition manager as an operator drives it through `audit-db partitions …`: premade future periods,
//! concurrent maintenance serialised by the advisory lock, quarterly partitions, retention with dry run, archive and
//! legal holds, and the analysis report — against a real PostgreSQL (a fresh database per test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use audit_testkit::{TestDb, sql};
use chrono::{DateTime, Datelike, Duration, Months, SecondsFormat, TimeZone, Timelike, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
use cli::{stderr, stdout};

fn cmd(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = cli::command(args);
    c.env("DATABASE_URL", &db.url);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn audit_db(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> Output {
    cli::run(&db.url, env, args)
}

/// Runs a command that must succeed and print one JSON document.
fn json_of(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> Value {
    cli::json_of(&db.url, env, args)
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}"))).unwrap().with_timezone(&Utc)
}

/// `partitions status --format json` as (name → (from, to)).
fn status(db: &TestDb, env: &[(&str, &str)]) -> BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> {
    let v = json_of(db, env, &["partitions", "status", "--format", "json"]);
    v.as_array()
        .expect("status is a JSON array")
        .iter()
        .map(|p| {
            assert_eq!(p["state"], "attached", "{p}");
            (p["name"].as_str().unwrap().to_string(), (time(&p["range_from"]), time(&p["range_to"])))
        })
        .collect()
}

fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).unwrap()
}

fn is_midnight_first(t: DateTime<Utc>) -> bool {
    t.day() == 1 && t.hour() == 0 && t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0
}

/// Periods of the given length (months) starting at `first`, `n` of them, as (from, to).
fn periods(first: DateTime<Utc>, months: u32, n: usize) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    (0..n)
        .map(|i| {
            let from = first + Months::new(months * i as u32);
            (from, from + Months::new(months))
        })
        .collect()
}

/// Starts `n` copies of `partitions maintain` at once and returns their outputs.
fn maintain_at_once(db: &TestDb, env: &[(&str, &str)], n: usize) -> Vec<Output> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            cmd(db, env, &["partitions", "maintain"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("audit-db starts")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_keeps_future_periods_ready_and_runs_one_at_a_time() {
    let db = TestDb::create("cli_part_maintain").await;
    let migrate = audit_db(&db, &[], &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    let report = json_of(&db, &[], &["partitions", "maintain"]);
    assert_eq!(report["ran"], json!(true), "nobody else holds the lock: {report}");
    assert!(report["analysis"]["missing_future"].as_array().unwrap().is_empty(), "{report}");

    let now = Utc::now();
    let parts = status(&db, &[]);
    let current = month_start(now);
    // The current month and at least three future months, calendar-aligned and contiguous.
    let want = periods(current, 1, 4);
    let have: BTreeSet<(DateTime<Utc>, DateTime<Utc>)> = parts.values().copied().collect();
    for p in &want {
        assert!(have.contains(p), "period {p:?} is missing from {parts:?}");
    }
    let future = parts.values().filter(|(from, _)| *from > now).count();
    assert!(future >= 3, "at least three future periods: {parts:?}");
    for (name, (from, to)) in &parts {
        assert!(is_midnight_first(*from) && *to == *from + Months::new(1), "{name}: [{from}, {to}) is not a month");
        assert_eq!(name, &format!("audit_log_{:04}_{:02}", from.year(), from.month()));
    }

    // The operator asks for six periods ahead; eight maintainers start at once. Each succeeds, the new periods are
    // created exactly once between them, and whoever did not get the lock says it skipped.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("audit-db.toml");
    std::fs::write(&config, "[partition]\npremake = 6\n").unwrap();
    let config = config.to_str().unwrap();
    let outs = maintain_at_once(&db, &[("AUDIT_DB_CONFIG", config)], 8);
    let mut created: Vec<String> = Vec::new();
    let mut ran = 0;
    for o in &outs {
        assert!(o.status.success(), "every maintainer exits 0: {}\n{}", stdout(o), stderr(o));
        let r: Value = serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("JSON ({e}): {}", stdout(o)));
        if r["ran"] == json!(true) {
            ran += 1;
            assert!(r["skipped_reason"].is_null(), "{r}");
            created.extend(r["created"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()));
        } else {
            assert_eq!(r["ran"], json!(false), "{r}");
            assert!(r["skipped_reason"].as_str().is_some_and(|s| s.contains("lock")), "{r}");
            assert!(r["created"].as_array().unwrap().is_empty(), "{r}");
            assert!(stderr(o).contains("maintenance skipped"), "{}", stderr(o));
        }
    }
    assert!(ran >= 1, "at least one maintainer ran");
    let expected_new: Vec<String> = periods(current + Months::new(4), 1, 3)
        .iter()
        .map(|(from, _)| format!("audit_log_{:04}_{:02}", from.year(), from.month()))
        .collect();
    created.sort();
    assert_eq!(created, expected_new, "each new period is created once, by one maintainer ({ran} ran)");
    let parts = status(&db, &[]);
    for p in periods(current, 1, 7) {
        assert!(parts.values().any(|v| *v == p), "period {p:?} is missing from {parts:?}");
    }

    // While another instance holds the maintenance lock, eight maintainers all skip — and all exit 0.
    let holder = sql(&db.url).await;
    let locked: bool = holder
        .query_one("SELECT pg_try_advisory_lock($1)", &[&audit_partition::MAINTENANCE_LOCK_KEY])
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    for o in maintain_at_once(&db, &[], 8) {
        assert!(o.status.success(), "{}", stderr(&o));
        let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(r["ran"], json!(false), "the lock is held elsewhere: {r}");
        assert!(r["skipped_reason"].as_str().is_some(), "{r}");
        assert!(stderr(&o).contains("maintenance skipped"), "{}", stderr(&o));
    }
    holder.execute("SELECT pg_advisory_unlock($1)", &[&audit_partition::MAINTENANCE_LOCK_KEY]).await.unwrap();
    let report = json_of(&db, &[], &["partitions", "maintain"]);
    assert_eq!(report["ran"], json!(true), "the lock is free again: {report}");

    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarterly_partitions_follow_calendar_quarters() {
    let db = TestDb::create("cli_part_quarterly").await;
    let q: &[(&str, &str)] = &[("AUDIT_DB_PARTITION_INTERVAL", "quarterly")];
    let migrate = audit_db(&db, q, &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    json_of(&db, q, &["partitions", "maintain"]);

    // An event of May 2019 goes to 2019's second quarter, created on demand.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.ndjson");
    std::fs::write(
        &file,
        format!(
            "{}\n",
            json!({"event_id": Uuid::new_v4().to_string(), "action": "legacy_import", "status": "success",
                   "timestamp": "2019-05-10T12:00:00Z", "organization_id": "north-clinic"})
        ),
    )
    .unwrap();
    let o = audit_db(&db, q, &["ingest", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let now = Utc::now();
    let parts = status(&db, q);
    let current = Utc.with_ymd_and_hms(now.year(), (now.month() - 1) / 3 * 3 + 1, 1, 0, 0, 0).unwrap();
    for p in periods(current, 3, 4) {
        assert!(parts.values().any(|v| *v == p), "quarter {p:?} is missing from {parts:?}");
    }
    assert!(parts.values().filter(|(from, _)| *from > now).count() >= 3, "three future quarters: {parts:?}");
    for (name, (from, to)) in &parts {
        assert!(
            is_midnight_first(*from) && [1, 4, 7, 10].contains(&from.month()),
            "{name} starts at {from}, not at a calendar quarter"
        );
        assert_eq!(*to, *from + Months::new(3), "{name}: [{from}, {to}) is not a quarter");
        assert_eq!(name, &format!("audit_log_{:04}_q{}", from.year(), (from.month() - 1) / 3 + 1));
    }
    let q2_2019 =
        (Utc.with_ymd_and_hms(2019, 4, 1, 0, 0, 0).unwrap(), Utc.with_ymd_and_hms(2019, 7, 1, 0, 0, 0).unwrap());
    assert_eq!(parts.get("audit_log_2019_q2"), Some(&q2_2019), "{parts:?}");
    let su = sql(&db.url).await;
    let n: i64 = su.query_one("SELECT count(*) FROM audit_log_2019_q2", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    let analysis = json_of(&db, q, &["partitions", "analyze", "--format", "json"]);
    assert_eq!(analysis["interval"], "quarterly", "{analysis}");
    assert!(analysis["missing_future"].as_array().unwrap().is_empty(), "{analysis}");

    // The scheme is recorded: a monthly run against this database is refused, naming the problem.
    let o = audit_db(&db, &[], &["partitions", "status", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "a different interval must be refused: {}", stdout(&o));
    assert!(stderr(&o).contains("quarterly") || stderr(&o).contains("interval"), "{}", stderr(&o));

    db.drop().await.unwrap();
}

/// Reads the archive directory: (data file name → decompressed NDJSON lines) and the manifests.
fn read_archive(dir: &Path) -> (BTreeMap<String, Vec<Value>>, Vec<Value>) {
    let mut data = BTreeMap::new();
    let mut manifests = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (data, manifests) };
    for e in entries {
        let path = e.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".manifest.json") {
            manifests.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
        } else {
            assert!(name.ends_with(".ndjson.gz"), "unexpected archive file {name}");
            let out = Command::new("gzip").arg("-dc").arg(&path).output().expect("gzip runs");
            assert!(out.status.success(), "{name} is a gzip file");
            let lines = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: NDJSON ({e}): {l}")))
                .collect();
            data.insert(name, lines);
        }
    }
    (data, manifests)
}

/// Checks that every data file has a manifest with the right partition, row count and checksum.
fn check_manifests(dir: &Path, data: &BTreeMap<String, Vec<Value>>, manifests: &[Value]) {
    assert_eq!(data.len(), manifests.len(), "one manifest per archive file: {manifests:?}");
    for m in manifests {
        let file = m["file_name"].as_str().unwrap();
        let lines = data.get(file).unwrap_or_else(|| panic!("manifest names a missing file: {m}"));
        assert_eq!(m["format"], "ndjson+gzip");
        assert_eq!(m["rows"], json!(lines.len()), "{m}");
        assert!(file.starts_with(m["partition"].as_str().unwrap()), "{m}");
        let sha = audit_partition::sha256_file(&dir.join(file)).unwrap();
        assert_eq!(m["sha256"], json!(sha), "the manifest's checksum is that of the file kept");
        let (from, to) = (time(&m["range_from"]), time(&m["range_to"]));
        for l in lines {
            // to_jsonb writes PostgreSQL's form, e.g. 2019-02-03T10:00:00+00:00, which is RFC 3339 too.
            let t = time(&l["timestamp"]);
            assert!(from <= t && t < to, "archived row outside its partition: {l}");
        }
    }
}

fn event_ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["event_id"].as_str().unwrap().to_string()).collect()
}

async fn total_rows(su: &tokio_postgres::Client) -> i64 {
    su.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_partitions_are_archived_then_dropped_unless_held() {
    let db = TestDb::create("cli_part_retention").await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_s = archive.to_str().unwrap().to_string();
    // 1000 days of retention: every 2019 partition of INTERNAL events is expired, nothing recent is.
    let env: &[(&str, &str)] = &[("AUDIT_DB_ARCHIVE_DIR", &archive_s), ("AUDIT_DB_PARTITION_RETENTION_DAYS", "1000")];
    let migrate = audit_db(&db, env, &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));

    // 2019 events (month, organisation or none, count) and recent ones.
    let plan: [(u32, Option<&str>, usize); 6] = [
        (2, Some("north-clinic"), 5),
        (5, Some("north-clinic"), 4),
        (5, None, 2),
        (8, Some("south-bank"), 3),
        (11, Some("south-bank"), 2),
        (11, Some("north-clinic"), 1),
    ];
    let mut lines = Vec::new();
    let mut old_by_month: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (month, org, n) in plan {
        for i in 0..n {
            let id = Uuid::new_v4().to_string();
            let ts = Utc.with_ymd_and_hms(2019, month, 3 + i as u32, 10, 0, 0).unwrap();
            lines.push(json!({"event_id": id, "action": "legacy_import", "status": "success",
                              "timestamp": ts.to_rfc3339_opts(SecondsFormat::Micros, true), "organization_id": org,
                              "data_classification": "INTERNAL", "details": {"i": i}}));
            old_by_month.entry(month).or_default().insert(id);
        }
    }
    let old_ids: BTreeSet<String> = old_by_month.values().flatten().cloned().collect();
    assert_eq!(old_ids.len(), 17);
    for i in 0..20 {
        lines.push(
            json!({"event_id": Uuid::new_v4().to_string(), "action": "user_authentication", "status": "success",
                          "timestamp": (Utc::now() - Duration::minutes(i)).to_rfc3339_opts(SecondsFormat::Micros, true),
                          "organization_id": if i % 2 == 0 { "north-clinic" } else { "south-bank" },
                          "data_classification": "INTERNAL"}),
        );
    }
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    let o = audit_db(&db, env, &["ingest", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let su = sql(&db.url).await;
    let before_parts = status(&db, env);
    let before_rows = total_rows(&su).await;
    assert_eq!(before_rows, 37);
    let part_2019: BTreeSet<String> =
        before_parts.keys().filter(|n| n.starts_with("audit_log_2019_")).cloned().collect();
    let want_2019: BTreeSet<String> = [2, 5, 8, 11].iter().map(|m| format!("audit_log_2019_{m:02}")).collect();
    assert_eq!(part_2019, want_2019, "the 2019 events went to their months' partitions");

    // Dry run: lists the 2019 partitions with their row counts, changes nothing.
    let dry = json_of(&db, env, &["partitions", "drop-expired", "--dry-run"]);
    assert_eq!(dry["dry_run"], json!(true), "{dry}");
    let items: BTreeMap<String, Value> = dry["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["partition"].as_str().unwrap().to_string(), i.clone()))
        .collect();
    assert_eq!(items.keys().cloned().collect::<BTreeSet<_>>(), want_2019, "{dry:#}");
    for (name, item) in &items {
        assert_eq!(item["action"], "would_drop", "{item}");
        let month: u32 = name[15..].parse().unwrap();
        assert_eq!(item["rows"], json!(old_by_month[&month].len()), "{item}");
    }
    assert_eq!(status(&db, env), before_parts, "a dry run changes no partition");
    assert_eq!(total_rows(&su).await, before_rows, "a dry run changes no row");
    assert!(read_archive(&archive).0.is_empty(), "a dry run archives nothing");
    // Without an archive directory nothing is ever dropped: the command refuses and says why.
    let o = audit_db(&db, &[("AUDIT_DB_PARTITION_RETENTION_DAYS", "1000")], &["partitions", "drop-expired"]);
    assert_eq!(o.status.code(), Some(1), "drop-expired without an archive must fail: {}", stdout(&o));
    assert!(stderr(&o).contains("AUDIT_DB_ARCHIVE_DIR"), "{}", stderr(&o));
    assert_eq!(status(&db, env), before_parts, "a refused run changes no partition");
    assert_eq!(total_rows(&su).await, before_rows, "a refused run changes no row");

    // A legal hold on south-bank keeps every partition holding one of its rows.
    let hold = json_of(&db, env, &["partitions", "hold", "place", "--org", "south-bank", "--reason", "case 2026-17"]);
    let hold_id = hold["hold_id"].as_i64().expect("a hold id");
    let holds = json_of(&db, env, &["partitions", "hold", "list"]);
    assert_eq!(holds.as_array().unwrap().len(), 1, "{holds}");
    assert_eq!(holds[0]["organization_id"], "south-bank");
    let analysis = json_of(&db, env, &["partitions", "analyze", "--format", "json"]);
    let held: BTreeSet<String> =
        analysis["held"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_string()).collect();
    assert_eq!(held, BTreeSet::from(["audit_log_2019_08".to_string(), "audit_log_2019_11".to_string()]), "{analysis}");
    let past: BTreeSet<String> =
        analysis["past_retention"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert_eq!(past, BTreeSet::from(["audit_log_2019_02".to_string(), "audit_log_2019_05".to_string()]), "{analysis}");

    let run = json_of(&db, env, &["partitions", "drop-expired"]);
    assert_eq!(run["dry_run"], json!(false), "{run}");
    let actions: BTreeMap<String, String> = run["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["partition"].as_str().unwrap().to_string(), i["action"].as_str().unwrap().to_string()))
        .collect();
    let expect: BTreeMap<String, String> = [("02", "dropped"), ("05", "dropped"), ("08", "held"), ("11", "held")]
        .iter()
        .map(|(m, a)| (format!("audit_log_2019_{m}"), a.to_string()))
        .collect();
    assert_eq!(actions, expect, "{run:#}");
    for i in run["items"].as_array().unwrap() {
        if i["action"] == "held" {
            assert_eq!(i["holds"], json!([hold_id]), "{i}");
        }
    }
    let (data, manifests) = read_archive(&archive);
    check_manifests(&archive, &data, &manifests);
    let archived: Vec<String> = data.values().flat_map(|l| event_ids(l)).collect();
    let expected: BTreeSet<String> = old_by_month[&2].union(&old_by_month[&5]).cloned().collect();
    assert_eq!(archived.len(), expected.len(), "each archived event once");
    assert_eq!(archived.into_iter().collect::<BTreeSet<_>>(), expected);
    let after = status(&db, env);
    let mut want_after = before_parts.clone();
    want_after.remove("audit_log_2019_02");
    want_after.remove("audit_log_2019_05");
    assert_eq!(after, want_after, "exactly the unheld expired partitions are gone");
    assert_eq!(total_rows(&su).await, before_rows - 11);

    // Releasing the hold lets the next run drop the rest; every 2019 event is then in the archive, exactly once.
    let released = json_of(&db, env, &["partitions", "hold", "release", &hold_id.to_string()]);
    assert_eq!(released["released"], json!(true), "{released}");
    let run = json_of(&db, env, &["partitions", "drop-expired"]);
    let dropped: BTreeSet<String> = run["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] == "dropped")
        .map(|i| i["partition"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dropped, BTreeSet::from(["audit_log_2019_08".to_string(), "audit_log_2019_11".to_string()]), "{run:#}");
    let (data, manifests) = read_archive(&archive);
    check_manifests(&archive, &data, &manifests);
    let archived: Vec<String> = data.values().flat_map(|l| event_ids(l)).collect();
    assert_eq!(archived.len(), 17, "the archive holds every 2019 event once");
    assert_eq!(archived.into_iter().collect::<BTreeSet<_>>(), old_ids);
    let after = status(&db, env);
    let mut want_after = before_parts.clone();
    want_after.retain(|name, _| !name.starts_with("audit_log_2019_"));
    assert_eq!(after, want_after, "exactly the 2019 partitions are gone");
    assert_eq!(total_rows(&su).await, 20, "the recent events are untouched");

    // Nothing left to do: analysis reports no expired, held or missing partitions.
    let analysis = json_of(&db, env, &["partitions", "analyze", "--format", "json"]);
    assert!(analysis["past_retention"].as_array().unwrap().is_empty(), "{analysis}");
    assert!(analysis["held"].as_array().unwrap().is_empty(), "{analysis}");
    assert!(analysis["missing_future"].as_array().unwrap().is_empty(), "{analysis}");
    assert_eq!(analysis["partitions"], json!(after.len()), "{analysis}");
    let again = json_of(&db, env, &["partitions", "drop-expired"]);
    assert!(again["items"].as_array().unwrap().is_empty(), "{again}");

    drop(su);
    db.drop().await.unwrap();
}
