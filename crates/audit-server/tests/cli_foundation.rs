//! The `audit-db` binary as a new user runs it: ingest with malformed lines, re-ingest, two ingesters at once,
//! every query flag, paging, health — against a real PostgreSQL (a fresh database per test).

use std::process::{Output, Stdio};

use audit_testkit::TestDb;
use chrono::Duration;
use serde_json::{Value, json};

#[path = "support/cli.rs"]
mod cli;
use cli::{counts, stderr, stdout, summary, ts};

fn audit_db(db: &TestDb, args: &[&str]) -> Output {
    cli::run(&db.url, &[], args)
}

fn write_file(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> String {
    cli::write_lines(dir.path(), name, lines).to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stores_exactly_the_valid_lines_and_names_every_bad_one() {
    let db = TestDb::create("cli_ingest").await;
    let migrate = audit_db(&db, &["migrate"]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 0..50 {
        lines.push(
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "action": "patient_data_access", "status": "success",
                   "timestamp": ts(Duration::minutes(i)), "organization_id": "hospital_1", "principal_id": format!("u{i}"),
                   "data_classification": "PHI", "details": {"i": i}})
            .to_string(),
        );
    }
    // Bad lines at known positions (1-based line numbers: 51..=56).
    lines.push("{not json".into());
    lines.push(json!({"action": "x", "status": "success", "timestamp": ts(Duration::days(-3650))}).to_string());
    lines.push(
        json!({"action": "x", "status": "success", "timestamp": ts(Duration::zero()), "principalId": "u"}).to_string(),
    );
    lines.push(json!({"action": "x", "status": "done", "timestamp": ts(Duration::zero())}).to_string());
    lines.push(
        json!({"action": "x", "status": "success", "timestamp": ts(Duration::zero()), "organization_id": 123})
            .to_string(),
    );
    lines.push(json!({"status": "success", "timestamp": ts(Duration::zero())}).to_string());
    // A 2019 event, stored in an on-demand partition.
    lines.push(
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "action": "legacy_import", "status": "success",
                      "timestamp": "2019-05-01T10:00:00Z", "organization_id": "hospital_1"})
        .to_string(),
    );
    let file = write_file(&dir, "events.ndjson", &lines);

    let o = audit_db(&db, &["ingest", &file]);
    assert_eq!(o.status.code(), Some(2), "some lines were rejected: {}", stderr(&o));
    assert_eq!(counts(&summary(&o)), json!({"accepted": 51, "rejected": 6, "duplicates": 0}));
    assert!(summary(&o)["commit_lsn"].is_string());
    let err = stderr(&o);
    for (n, needle) in
        [(51, "JSON"), (52, "future"), (53, "principalId"), (54, "status"), (55, "organization_id"), (56, "action")]
    {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("line {n}: ")))
            .unwrap_or_else(|| panic!("line {n} named: {err}"));
        assert!(line.contains(needle), "line {n} should mention {needle}: {line}");
    }
    if let Some(l) = err.lines().find(|l| l.starts_with("line 52")) {
        assert!(l.contains("timestamp"), "{l}");
    }

    // Re-ingest: nothing stored twice.
    let again = audit_db(&db, &["ingest", &file]);
    assert_eq!(counts(&summary(&again)), json!({"accepted": 0, "rejected": 6, "duplicates": 51}));

    // The 2019 event is found.
    let q = audit_db(
        &db,
        &["query", "--org", "hospital_1", "--from", "2019-01-01T00:00:00Z", "--to", "2019-12-31T23:59:59Z"],
    );
    assert!(q.status.success(), "{}", stderr(&q));
    let rows: Vec<Value> = stdout(&q).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["action"], "legacy_import");
    assert!(stderr(&q).contains("cache=db"), "the tier is logged: {}", stderr(&q));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingesters_of_the_same_file_store_each_event_once() {
    let db = TestDb::create("cli_race").await;
    assert!(audit_db(&db, &["migrate"]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..20_000)
        .map(|i| {
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "action": "user_authentication", "status": "success",
                   "timestamp": ts(Duration::seconds(i)), "organization_id": format!("org{}", i % 17)})
            .to_string()
        })
        .collect();
    let file = write_file(&dir, "race.ndjson", &lines);
    let spawn = || {
        cli::command(&["ingest", &file])
            .env("DATABASE_URL", &db.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}\n{}", stderr(&a), stderr(&b));
    let (sa, sb) = (summary(&a), summary(&b));
    assert_eq!(sa["accepted"].as_u64().unwrap() + sb["accepted"].as_u64().unwrap(), 20_000);
    assert_eq!(sa["duplicates"].as_u64().unwrap() + sb["duplicates"].as_u64().unwrap(), 20_000);
    let c = audit_db(&db, &["query", "--count"]);
    assert_eq!(stdout(&c).trim(), "20000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_flags_formats_and_paging() {
    let db = TestDb::create("cli_query").await;
    assert!(audit_db(&db, &["migrate"]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 0..30 {
        lines.push(
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "action": if i % 2 == 0 { "user_authentication" } else { "payment_processed" },
                   "status": if i % 3 == 0 { "failure" } else { "success" }, "timestamp": ts(Duration::minutes(i * 10)),
                   "organization_id": if i < 20 { "org_a" } else { "org_b" }, "principal_id": format!("u{}", i % 4),
                   "target_resource_type": "account", "target_resource_id": format!("acc{}", i % 5),
                   "correlation_id": format!("req{}", i % 2), "data_classification": if i % 2 == 0 { "CONFIDENTIAL" } else { "FINANCIAL" },
                   "details": {"channel": if i % 5 == 0 { "api" } else { "web" }}})
            .to_string(),
        );
    }
    let file = write_file(&dir, "q.ndjson", &lines);
    assert!(audit_db(&db, &["ingest", &file]).status.success());
    let count = |args: &[&str]| -> usize {
        let mut a = vec!["query", "--limit", "10000"];
        a.extend_from_slice(args);
        let o = audit_db(&db, &a);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o).lines().count()
    };
    assert_eq!(count(&["--org", "org_a"]), 20);
    assert_eq!(count(&["--principal", "u1"]), 8);
    assert_eq!(count(&["--action", "payment_processed"]), 15);
    assert_eq!(count(&["--action", "payment_processed,user_authentication"]), 30);
    assert_eq!(count(&["--status", "failure"]), 10);
    assert_eq!(count(&["--resource-type", "account"]), 30);
    assert_eq!(count(&["--resource-id", "acc2"]), 6);
    assert_eq!(count(&["--classification", "FINANCIAL"]), 15);
    assert_eq!(count(&["--correlation-id", "req1"]), 15);
    assert_eq!(count(&["--details", r#"{"channel":"api"}"#]), 6);
    assert_eq!(count(&["--from", "now-95m"]), 10);
    assert_eq!(count(&["--org", "org_a", "--status", "failure", "--action", "user_authentication"]), 4);

    // Paging: 30 rows in pages of 7 via next_cursor, no row twice, none missed.
    let mut seen = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["query".to_string(), "--limit".into(), "7".into()];
        if let Some(a) = &after {
            args.push("--after".into());
            args.push(a.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = audit_db(&db, &args);
        for l in stdout(&o).lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(seen.insert(v["event_id"].as_str().unwrap().to_string()));
        }
        after = stderr(&o).lines().find_map(|l| l.strip_prefix("next_cursor=").map(str::to_string));
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 30);

    let csv = audit_db(&db, &["query", "--org", "org_b", "--format", "csv"]);
    assert_eq!(stdout(&csv).lines().count(), 11, "header + 10 rows");
    let table = audit_db(&db, &["query", "--org", "org_b", "--format", "table"]);
    assert!(stdout(&table).contains("org_b"));
    let bad = audit_db(&db, &["query", "--status", "ok"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--status"), "{}", stderr(&bad));

    let h = audit_db(&db, &["health"]);
    assert!(h.status.success(), "{}", stderr(&h));
    let report: Value = serde_json::from_str(&stdout(&h)).unwrap();
    assert_eq!(report["overall"], "healthy");
    assert!(report["components"]["primary"].is_object());
}

#[test]
fn a_stopped_database_fails_fast_naming_host_and_port() {
    let started = std::time::Instant::now();
    let o = cli::run(
        "postgres://postgres@127.0.0.1:1/test",
        &[("AUDIT_DB_CONNECTION_TIMEOUT", "1000")],
        &["query", "--org", "x"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("attempt"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "failed within seconds");
}
