//! Compliance through the HTTP service: `audit-db serve` on a free port against a real PostgreSQL and Redis with the
//! personal-data policy on. Audited reads never record a subject's id in clear; an admin key erases a subject
//! (crypto-shredding) and the service reads its values as `[erased]` at once; FHIR AuditEvents go in and out.

use std::path::{Path, PathBuf};

use audit_testkit::{TestDb, sql};
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
#[path = "support/service.rs"]
mod service;
use service::Service;

const ORG: &str = "north-clinic";
/// A data subject: a principal id only ever written in `principal_id` and used as a filter.
const ALICE: &str = "nurse-alicia-7781";
/// A subject that stays.
const BOB: &str = "nurse-boris-5512";

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
    // A legal hold on the organisation refuses the erasure (409, the hold named) and changes nothing.
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hold = cli::json_of(&db.url, &vars, &["partitions", "hold", "place", "--org", ORG, "--reason", "case 17"]);
    let (code, refused) = svc.post(&admin, &path, &json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["status"], "refused_legal_hold", "{refused}");
    assert_eq!(refused["legal_holds"][0]["id"], hold["hold_id"], "{refused}");
    let hold_id = hold["hold_id"].to_string();
    cli::json_of(&db.url, &vars, &["partitions", "hold", "release", &hold_id]);

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

/// An HL7 example AuditEvent (a RESTful read), recorded now under a fresh id.
fn hl7_audit_event() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../audit-fhir/tests/data/AuditEvent-example-rest.json");
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r["id"] = json!(Uuid::new_v4().to_string());
    r["recorded"] = json!(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true));
    // `source.site` is the organisation.
    r["source"]["site"] = json!(ORG);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_audit_events_go_in_and_come_back_as_a_bundle_with_the_same_mapping() {
    let db = TestDb::create("http_comp_fhir").await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let svc = Service::start(&db, &[("AUDIT_DB_API_BODY_LIMIT", "65536")]).await;
    let (ingest, query) = (key_of(&db, ORG, "ingest"), key_of(&db, ORG, "query"));
    let resource = hl7_audit_event();
    let expected = audit_fhir::from_audit_event(&resource).expect("the example maps");

    // Keys are required, with the ingest scope.
    let r = svc.http.post(svc.url("/fhir/AuditEvent")).json(&resource).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (code, body) = svc.post(&query, "/fhir/AuditEvent", &resource).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    // Another organisation's site is refused for a bound key, as on /v1/events.
    let mut other = resource.clone();
    other["source"]["site"] = json!("south-clinic");
    let (code, body) = svc.post(&ingest, "/fhir/AuditEvent", &other).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("resource: "), "{body}");

    let r = svc
        .http
        .post(svc.url("/fhir/AuditEvent"))
        .bearer_auth(&ingest)
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["accepted"].clone(), body["rejected"].clone()), (json!(1), json!(0)), "{body}");
    assert_eq!(body["items"][0]["at"], "resource", "{body}");
    let event_id = body["items"][0]["event_id"].as_str().unwrap().to_string();
    assert_eq!(json!(event_id), expected["event_id"], "{body}");

    // Back as a FHIR Bundle, by parameter and by Accept header.
    let by_param = svc.http.get(svc.url(&format!("/v1/events?event_id={event_id}&format=fhir"))).bearer_auth(&query);
    let by_accept = svc
        .http
        .get(svc.url(&format!("/v1/events?event_id={event_id}")))
        .bearer_auth(&query)
        .header("accept", "application/fhir+json");
    for req in [by_param, by_accept] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/fhir+json");
        let bundle: Value = r.json().await.unwrap();
        assert_eq!((bundle["resourceType"].as_str(), bundle["type"].as_str()), (Some("Bundle"), Some("collection")));
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{bundle}");
        let back = audit_fhir::from_audit_event(&entries[0]["resource"]).expect("our export maps back");
        for f in [
            "event_id",
            "timestamp",
            "action",
            "status",
            "principal_id",
            "target_resource_type",
            "target_resource_id",
            "outcome_description",
        ] {
            assert_eq!(back[f], expected[f], "{f}: {bundle}");
        }
        assert_eq!(back["organization_id"], ORG, "bound to the key's organisation: {bundle}");
    }
    let (code, body) = svc.get(&query, "/v1/events?format=xml").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("format:"), "{body}");
    let (code, body) = svc.get(&query, "/v1/events?format=fhir&nope=1").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("nope"), "{body}");

    // NDJSON with a bad line: the bad one named, the good one stored.
    let ndjson = format!("{}\n{{\"resourceType\":\"AuditEvent\"}}\n", hl7_audit_event());
    let r = svc.http.post(svc.url("/fhir/AuditEvent")).bearer_auth(&ingest).body(ndjson).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["accepted"].clone(), body["rejected"].clone()), (json!(1), json!(1)), "{body}");
    assert_eq!(body["items"][1]["at"], "line 2", "{body}");
    assert!(body["items"][1]["error"].as_str().unwrap().starts_with("line 2: AuditEvent"), "{body}");

    // Over the body limit: 413 as a problem, nothing stored.
    let big = format!("{}\n", hl7_audit_event()).repeat(40);
    assert!(big.len() > 65536);
    // The server answers before reading the rest of the body and closes that connection; `Connection: close`
    // keeps the client from reusing it for the next request (a race between its pool and the server's FIN).
    let r = svc
        .http
        .post(svc.url("/fhir/AuditEvent"))
        .bearer_auth(&ingest)
        .header(reqwest::header::CONNECTION, "close")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (_, page) = svc.get(&query, "/v1/events?action=rest.vread").await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
}
