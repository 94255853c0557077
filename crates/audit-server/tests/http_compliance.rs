//! Compliance through the HTTP service: `audit-db serve` on a free port against a real PostgreSQL and Redis with the
//! personal-data policy on. Audited reads never record a subject's id in clear; an admin key erases a subject
//! (crypto-shredding) and the service reads its values as `[erased]` at once; FHIR AuditEvents go in and out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_testkit::{TestDb, redis_url, sql, wait_for};
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;

const ORG: &str = "north-clinic";
/// A data subject: a principal id only ever written in `principal_id` and used as a filter.
const ALICE: &str = "nurse-alicia-7781";
/// A subject that stays.
const BOB: &str = "nurse-boris-5512";

/// A running `audit-db serve`.
struct Service {
    base: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Service {
    async fn start(db: &TestDb, env: &[(String, String)]) -> Service {
        let port = free_port();
        let mut c = cli::async_command(&["serve"]);
        c.env("DATABASE_URL", &db.url)
            .env("REDIS_URL", redis_url())
            .env("AUDIT_DB_LISTEN", format!("127.0.0.1:{port}"))
            .env("LOG_LEVEL", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("audit-db serve starts");
        let s = Service { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _child: child };
        let url = format!("{}/ready", s.base);
        let http = s.http.clone();
        wait_for("the service to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == StatusCode::OK) }
        })
        .await;
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(key).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(self.url(path)).bearer_auth(key).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn key_of(db: &TestDb, org: &str, scopes: &str) -> String {
    let v = cli::json_of(
        &db.url,
        &[],
        &["api-keys", "create", "--org", org, "--scopes", scopes, "--name", "t", "--format", "json"],
    );
    v["key"].as_str().unwrap().to_string()
}

/// A migrated database and the environment of the personal-data policy (master key made by `keygen --master`).
async fn setup(prefix: &str, dir: &Path) -> (TestDb, Vec<(String, String)>) {
    let db = TestDb::create(prefix).await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let out: PathBuf = dir.join("keys");
    cli::ok(&cli::run_offline(&["keygen", "--master", "--out", out.to_str().unwrap()]), "keygen --master");
    let env = vec![
        ("AUDIT_DB_MASTER_KEY_FILE".to_string(), out.join("master.key").to_str().unwrap().to_string()),
        ("AUDIT_DB_PERSONAL_FIELDS".to_string(), "principal_id,target_resource_id".to_string()),
    ];
    (db, env)
}

fn event(principal: &str, patient: &str) -> Value {
    json!({"event_id": Uuid::new_v4(), "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
           "action": "patient_data_access", "status": "success", "organization_id": ORG,
           "principal_id": principal, "target_resource_type": "patient_record", "target_resource_id": patient,
           "data_classification": "PHI"})
}

/// Every row of `audit_log`, all columns as text, the way a dump shows them.
async fn raw_rows(db: &TestDb) -> String {
    let su = sql(&db.url).await;
    let mut text = String::new();
    for r in su.query("SELECT t::text FROM audit_log t", &[]).await.unwrap() {
        text.push_str(&r.get::<_, String>(0));
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audited_read_filtered_by_a_subject_never_records_its_id_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (db, env) = setup("http_comp_filter", dir.path()).await;
    let svc = Service::start(&db, &env).await;
    let (ingest, query) = (key_of(&db, ORG, "ingest"), key_of(&db, ORG, "query"));
    let (code, body) = svc.post(&ingest, "/v1/events", &event(ALICE, "patient-77")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    let (code, page) = svc.get(&query, &format!("/v1/events?principal={ALICE}&resource_id=patient-77")).await;
    assert_eq!(code, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["principal_id"], ALICE, "an authorised read shows the value");

    // The read was recorded, with the filter's personal values redacted.
    let (code, page) = svc.get(&query, "/v1/events?action=audit_log_access").await;
    assert_eq!(code, StatusCode::OK, "{page}");
    let filters: Vec<&Value> = page["events"].as_array().unwrap().iter().map(|e| &e["details"]["filter"]).collect();
    assert!(filters.iter().any(|f| f["principal"] == "[redacted]" && f["resource_id"] == "[redacted]"), "{filters:?}");
    let raw = raw_rows(&db).await;
    assert!(raw.contains("audit_log_access"), "the access events are in the dump");
    assert!(!raw.contains(ALICE), "the subject's id is in clear in audit_log:\n{raw}");
    assert!(!raw.contains("patient-77"), "the resource id is in clear in audit_log:\n{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_erases_a_subject_through_the_api_and_reads_show_erased() {
    let dir = tempfile::tempdir().unwrap();
    let (db, env) = setup("http_comp_erase", dir.path()).await;
    let svc = Service::start(&db, &env).await;
    let (ingest, query, admin) = (key_of(&db, ORG, "ingest"), key_of(&db, ORG, "query"), key_of(&db, ORG, "admin"));
    let batch = json!([event(ALICE, "patient-1"), event(ALICE, "patient-2"), event(BOB, "patient-3")]);
    let (code, body) = svc.post(&ingest, "/v1/events", &batch).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    let path = format!("/v1/subjects/{ALICE}/erase");
    for k in [&ingest, &query] {
        let (code, body) = svc.post(k, &path, &json!({})).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    }
    let (code, dry) = svc.post(&admin, &format!("{path}?dry_run=true"), &json!({})).await;
    assert_eq!(code, StatusCode::OK, "{dry}");
    assert_eq!(dry["status"], "dry_run", "{dry}");
    assert_eq!(dry["total_events"], 2, "{dry}");
    let (_, page) = svc.get(&query, "/v1/events?action=patient_data_access").await;
    assert!(page["events"].as_array().unwrap().iter().any(|e| e["principal_id"] == ALICE), "dry run changed nothing");

    let (code, report) = svc.post(&admin, &path, &json!({"dry_run": false})).await;
    assert_eq!(code, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "erased", "{report}");
    assert_eq!(report["erasure_event_ids"].as_array().unwrap().len(), 1, "{report}");

    let (code, page) = svc.get(&query, "/v1/events?action=patient_data_access").await;
    assert_eq!(code, StatusCode::OK, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{page}");
    let erased: Vec<&Value> = events.iter().filter(|e| e["principal_id"] == "[erased]").collect();
    assert_eq!(erased.len(), 2, "the subject's values read as [erased] at once: {page}");
    assert!(events.iter().any(|e| e["principal_id"] == BOB && e["target_resource_id"] == "patient-3"), "{page}");
    assert!(!page.to_string().contains(ALICE), "{page}");

    // The erasure itself is recorded (naming the key, not the subject).
    let (_, page) = svc.get(&query, "/v1/events?action=personal_data_erasure").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    // Again: no key left.
    let (code, again) = svc.post(&admin, &path, &json!({})).await;
    assert_eq!((code, again["status"].clone()), (StatusCode::OK, json!("no_key")), "{again}");
}
