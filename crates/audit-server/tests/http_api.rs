//! The HTTP service as a client meets it: `audit-db serve` started on a free port against a real PostgreSQL and
//! Redis, API keys made with `audit-db api-keys create`, and every answer read over HTTP.

use std::time::{Duration, Instant};

use audit_testkit::TestDb;
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
#[path = "support/service.rs"]
mod service;
use service::{Service, free_port};

/// `audit-db api-keys create … --format json`.
fn create_key(db: &TestDb, org: &str, scopes: &str) -> Value {
    cli::json_of(
        &db.url,
        &[],
        &["api-keys", "create", "--org", org, "--scopes", scopes, "--name", "t", "--format", "json"],
    )
}

fn key_of(db: &TestDb, org: &str, scopes: &str) -> String {
    create_key(db, org, scopes)["key"].as_str().unwrap().to_string()
}

async fn migrated(prefix: &str) -> TestDb {
    let db = TestDb::create(prefix).await;
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    db
}

fn ts() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn event(org: &str, action: &str) -> Value {
    json!({"event_id": Uuid::new_v4(), "timestamp": ts(), "action": action, "status": "success",
           "organization_id": org, "principal_id": "dr-who", "data_classification": "PHI"})
}

const NO_AUDIT: (&str, &str) = ("AUDIT_DB_AUDIT_READS", "false");

/// The scope a route needs, for the 403 rows of the table.
fn needed_scope(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("post", "/v1/verify") => "verify",
        ("post", _) => "ingest",
        _ => "query",
    }
}

#[tokio::test]
async fn every_v1_route_and_method_refuses_a_missing_unknown_or_wrong_scope_key() {
    let db = migrated("http_auth").await;
    let svc = Service::start(&db, &[NO_AUDIT]).await;
    // The table is the published contract itself.
    let doc: Value = svc.http.get(svc.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(audit_server::http::openapi::document()).unwrap());
    let revoked = create_key(&db, "org_a", "ingest,query,verify");
    cli::ok(&cli::run(&db.url, &[], &["api-keys", "revoke", revoked["id"].as_str().unwrap()]), "revoke");
    let mut rows = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let concrete = path.replace("{event_id}", &Uuid::new_v4().to_string()).replace("{org}", "org_a");
        for method in ops.as_object().unwrap().keys() {
            let other_scope = if needed_scope(method, path) == "query" { "ingest" } else { "query" };
            let wrong_scope = key_of(&db, "org_a", other_scope);
            let cases: [(Option<&str>, StatusCode); 4] = [
                (None, StatusCode::UNAUTHORIZED),
                (Some("adb_not-a-real-key"), StatusCode::UNAUTHORIZED),
                (Some(revoked["key"].as_str().unwrap()), StatusCode::UNAUTHORIZED),
                (Some(&wrong_scope), StatusCode::FORBIDDEN),
            ];
            for (key, want) in cases {
                let mut req = match method.as_str() {
                    "get" => svc.http.get(svc.url(&concrete)),
                    "post" => svc.http.post(svc.url(&concrete)).body("{}"),
                    m => panic!("unexpected method {m} in the OpenAPI document"),
                };
                if let Some(k) = key {
                    req = req.bearer_auth(k);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), want, "{method} {path} with key {key:?}");
                assert_eq!(r.headers()["content-type"], "application/problem+json", "{method} {path}");
                if want == StatusCode::UNAUTHORIZED {
                    assert!(r.headers().contains_key("www-authenticate"), "{method} {path}");
                }
                let p: Value = r.json().await.unwrap();
                assert_eq!(p["status"], want.as_u16());
                assert!(p["type"].as_str().unwrap().starts_with(audit_server::http::PROBLEM_BASE), "{p}");
                rows += 1;
            }
        }
    }
    assert!(rows >= 7 * 4, "every /v1 operation was tried ({rows} rows)");
    // Nothing was written by the refused requests.
    let admin = key_of(&db, "org_a", "admin");
    let (_, page) = svc.get(&admin, "/v1/events").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 0, "{page}");
}

#[tokio::test]
async fn a_key_sees_only_its_own_organisations_events_proofs_and_checkpoints() {
    let db = migrated("http_orgs").await;
    let keydir = tempfile::tempdir().unwrap();
    cli::ok(&cli::run_offline(&["keygen", "--out", keydir.path().to_str().unwrap()]), "keygen");
    let signing = keydir.path().join("signing.key");
    let signing = signing.to_str().unwrap();
    let svc = Service::start(&db, &[NO_AUDIT, ("AUDIT_DB_SIGNING_KEY_FILE", signing)]).await;
    let a = key_of(&db, "org_a", "ingest,query,verify");
    let b = key_of(&db, "org_b", "ingest,query");

    let (code, ack_a) = svc.post(&a, "/v1/events", &event("org_a", "read_chart")).await;
    assert_eq!(code, StatusCode::CREATED, "{ack_a}");
    let (code, ack_b) = svc.post(&b, "/v1/events", &json!([event("org_b", "x"), event("org_b", "y")])).await;
    assert_eq!(code, StatusCode::CREATED, "{ack_b}");
    let b_id = ack_b["items"][0]["event_id"].as_str().unwrap().to_string();
    // An event without organization_id is the key's.
    let mut no_org = event("org_a", "no_org");
    no_org.as_object_mut().unwrap().remove("organization_id");
    let (code, _) = svc.post(&a, "/v1/events", &no_org).await;
    assert_eq!(code, StatusCode::CREATED);

    // Writing for another organisation: 403, nothing stored (also for one bad item of an array).
    let (code, p) = svc.post(&a, "/v1/events", &event("org_b", "forged")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("organization_id"), "{p}");
    let (code, p) = svc.post(&a, "/v1/events", &json!([event("org_a", "ok"), event("org_b", "forged")])).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{p}");
    assert!(p["detail"].as_str().unwrap().starts_with("[1].organization_id"), "{p}");

    let (code, page) = svc.get(&a, "/v1/events").await;
    assert_eq!(code, StatusCode::OK);
    let orgs: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["organization_id"].as_str().unwrap()).collect();
    assert_eq!(orgs, ["org_a", "org_a"], "{page}");
    let (code, p) = svc.get(&a, "/v1/events?org=org_b").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{p}");
    assert!(p["detail"].as_str().unwrap().starts_with("org:"), "{p}");
    let (code, _) = svc.get(&a, &format!("/v1/events?event_id={b_id}")).await;
    assert_eq!(code, StatusCode::OK);
    let (_, page) = svc.get(&a, &format!("/v1/events?event_id={b_id}")).await;
    assert!(page["events"].as_array().unwrap().is_empty(), "{page}");
    let (code, _) = svc.get(&a, &format!("/v1/events/{b_id}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, e) = svc.get(&b, &format!("/v1/events/{b_id}")).await;
    assert_eq!((code, e["action"].as_str()), (StatusCode::OK, Some("x")));

    // Proofs and checkpoints, after sealing.
    let sealed = cli::run(&db.url, &[("AUDIT_DB_SIGNING_KEY_FILE", signing)], &["checkpoint"]);
    cli::ok(&sealed, "checkpoint");
    let a_id = ack_a["event_id"].as_str().unwrap();
    let (code, proof) = svc.get(&a, &format!("/v1/proofs/{a_id}")).await;
    assert_eq!(code, StatusCode::OK, "{proof}");
    assert_eq!(proof["organization_id"], "org_a");
    assert!(proof["checkpoint"].as_str().unwrap().contains("org_a"), "{proof}");
    let (code, _) = svc.get(&a, &format!("/v1/proofs/{b_id}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "another organisation's proof does not even confirm the event");
    let (code, cp) = svc.get(&a, "/v1/checkpoints/org_a").await;
    assert_eq!(code, StatusCode::OK, "{cp}");
    assert_eq!(cp["checkpoint"]["tree_size"], 2);
    let (code, _) = svc.get(&a, "/v1/checkpoints/org_b").await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, p) = svc.get(&a, "/v1/checkpoints/org_a?sise=1").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("sise"), "{p}");
    let (code, v) = svc.post(&a, "/v1/verify", &json!({})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!((v["organization_id"].as_str(), v["clean"].as_bool()), (Some("org_a"), Some(true)), "{v}");
    let (code, _) = svc.post(&a, "/v1/verify", &json!({"org": "org_b"})).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_revoked_key_fails_within_a_second_on_every_instance() {
    let db = migrated("http_revoke").await;
    let one = Service::start(&db, &[NO_AUDIT]).await;
    let two = Service::start(&db, &[NO_AUDIT]).await;
    let created = create_key(&db, "org_a", "query");
    let key = created["key"].as_str().unwrap();
    for s in [&one, &two] {
        assert_eq!(s.get(key, "/v1/events").await.0, StatusCode::OK, "the key works before revocation");
    }
    let o = cli::run(&db.url, &[], &["api-keys", "revoke", created["id"].as_str().unwrap()]);
    cli::ok(&o, "revoke");
    let revoked_at = Instant::now();
    for s in [&one, &two] {
        while s.get(key, "/v1/events").await.0 == StatusCode::OK {
            assert!(revoked_at.elapsed() < Duration::from_millis(1_100), "a revoked key still works after 1 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(s.get(key, "/v1/events").await.0, StatusCode::UNAUTHORIZED);
    }
    let listed = cli::json_of(&db.url, &[], &["api-keys", "list", "--format", "json"]);
    assert!(listed[0]["revoked_at"].is_string() && listed[0].get("key").is_none(), "{listed}");
}

#[tokio::test]
async fn post_then_get_round_trips_every_seed_field_and_hands_over_the_commit_lsn() {
    let db = migrated("http_roundtrip").await;
    let svc = Service::start(&db, &[NO_AUDIT]).await;
    let key = key_of(&db, "hospital_1", "ingest,query");
    let sent = json!({
        "event_id": Uuid::new_v4(), "timestamp": "2026-11-30T08:15:42.123456Z", "action": "patient_record_view",
        "status": "failure", "principal_id": "nurse-77", "organization_id": "hospital_1",
        "target_resource_type": "Patient", "target_resource_id": "p-123", "outcome_description": "denied: no consent",
        "correlation_id": "corr-9", "data_classification": "PHI", "retention_policy": "hipaa_6y",
        "event_version": "2.1", "ttl": "P6Y", "processing_latency": 17,
        "details": {"access_reason": "treatment", "ip": "203.0.113.7", "nested": {"a": [1, 2.5, "x", null, true]}},
    });
    let r = svc.http.post(svc.url("/v1/events")).bearer_auth(&key).json(&sent).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let lsn = r.headers()["x-audit-commit-lsn"].to_str().unwrap().to_string();
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["result"], "stored");
    assert_eq!(ack["seq"], 0);
    assert!(ack["id"].as_i64().is_some(), "{ack}");
    assert_eq!(ack["commit_lsn"], lsn.as_str());
    let id = sent["event_id"].as_str().unwrap();
    let got: Value = svc
        .http
        .get(svc.url(&format!("/v1/events/{id}")))
        .bearer_auth(&key)
        .header("X-Audit-Min-LSN", &lsn)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (field, value) in sent.as_object().unwrap() {
        assert_eq!(&got[field], value, "field {field} round-trips exactly: {got}");
    }
    assert_eq!(got["seq"], 0);
    // A bad position header is refused, naming it.
    let r =
        svc.http.get(svc.url("/v1/events")).bearer_auth(&key).header("X-Audit-Min-LSN", "later").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().starts_with("x-audit-min-lsn"), "{p}");
    // The same event again is a duplicate, not a second row.
    let (code, again) = svc.post(&key, "/v1/events", &sent).await;
    assert_eq!((code, again["result"].as_str()), (StatusCode::CREATED, Some("duplicate")));
    // Every filter of the CLI, by its name; a misspelt one is named.
    let (code, page) = svc
        .get(
            &key,
            "/v1/events?principal=nurse-77&action=patient_record_view&status=failure&resource_type=Patient\
                    &resource_id=p-123&classification=phi&correlation_id=corr-9&retention_policy=hipaa_6y\
                    &from=2026-11-30T00:00:00Z&to=now&details=%7B%22access_reason%22%3A%22treatment%22%7D&limit=5",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    for bad in ["orgg=x", "limit=abc", "status=maybe"] {
        let (code, p) = svc.get(&key, &format!("/v1/events?{bad}")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {p}");
        let name = bad.split('=').next().unwrap();
        assert!(p["detail"].as_str().unwrap().contains(name), "{bad}: {p}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_and_bad_batch_lines_are_named_while_the_others_are_stored() {
    let db = migrated("http_limits").await;
    let svc = Service::start(&db, &[NO_AUDIT, ("AUDIT_DB_API_BODY_LIMIT", "4096")]).await;
    let key = key_of(&db, "org_a", "ingest,query");
    let big: Vec<Value> = (0..40).map(|i| event("org_a", &format!("bulk_{i}"))).collect();
    assert!(serde_json::to_vec(&big).unwrap().len() > 4096);
    // `Connection: close` on the refused requests: the server may answer before reading the whole body and close
    // the connection, which the client must not reuse for the next request.
    let close = (reqwest::header::CONNECTION, "close");
    let r = svc.http.post(svc.url("/v1/events")).bearer_auth(&key).header(close.0.clone(), close.1).json(&big);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let lines: String = big.iter().map(|e| format!("{e}\n")).collect();
    let r = svc.http.post(svc.url("/v1/events:batch")).bearer_auth(&key).header(close.0, close.1).body(lines);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, page) = svc.get(&key, "/v1/events").await;
    assert!(page["events"].as_array().unwrap().is_empty(), "nothing stored: {page}");

    let good1 = event("org_a", "first");
    let good2 = event("org_a", "third");
    let mut bad = event("org_a", "second");
    bad["status"] = json!("maybe");
    let body = format!("{good1}\n{bad}\n\n{}\n{good2}\n", event("org_b", "forged"));
    let r = svc.http.post(svc.url("/v1/events:batch")).bearer_auth(&key).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let out: Vec<Value> = r.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len(), 5, "{out:?}");
    assert_eq!((out[0]["line"].as_u64(), out[0]["result"].as_str()), (Some(1), Some("stored")));
    assert!(out[0]["seq"].is_i64() && out[0]["id"].is_i64(), "{:?}", out[0]);
    assert_eq!((out[1]["line"].as_u64(), out[1]["result"].as_str()), (Some(2), Some("rejected")));
    assert!(out[1]["error"].as_str().unwrap().starts_with("line 2: status"), "{:?}", out[1]);
    assert_eq!(out[2]["line"], 4);
    assert!(out[2]["error"].as_str().unwrap().contains("organization_id"), "{:?}", out[2]);
    assert_eq!((out[3]["line"].as_u64(), out[3]["result"].as_str()), (Some(5), Some("stored")));
    assert_eq!(out[4]["summary"]["accepted"], 2);
    assert_eq!(out[4]["summary"]["rejected"], 2);
    let (_, page) = svc.get(&key, "/v1/events").await;
    let actions: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions.len(), 2, "{page}");
    assert!(actions.contains(&"first") && actions.contains(&"third"), "{actions:?}");
}

/// A streamed batch larger than one read-ahead chunk (1 MiB of NDJSON) is stored chunk by chunk: every line gets
/// its own result in order under its own number, the bad ones (spread over every chunk) are named, and exactly the
/// others are stored.
#[tokio::test]
async fn a_batch_of_many_chunks_answers_every_line_in_order_and_stores_exactly_the_valid_ones() {
    let db = migrated("http_chunks").await;
    let svc = Service::start(&db, &[NO_AUDIT]).await;
    let key = key_of(&db, "org_a", "ingest,query");
    let n = 12_000u64;
    let bad = |i: u64| i.is_multiple_of(397) || i == 1 || i == n;
    let mut body = String::new();
    for i in 1..=n {
        let mut e = event("org_a", &format!("chunk_{i}"));
        if bad(i) {
            e["timestamp"] = json!("not a time");
        }
        body.push_str(&format!("{e}\n"));
    }
    assert!(body.len() > 2 * 1024 * 1024, "several chunks: {} bytes", body.len());
    let r = svc.http.post(svc.url("/v1/events:batch")).bearer_auth(&key).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let out: Vec<Value> = r.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len() as u64, n + 1, "one line per input line and the summary");
    let rejected = (1..=n).filter(|i| bad(*i)).count() as u64;
    for (i, line) in (1..=n).zip(&out) {
        assert_eq!(line["line"], i, "{line}");
        if bad(i) {
            assert_eq!(line["result"], "rejected", "{line}");
            assert!(line["error"].as_str().unwrap().starts_with(&format!("line {i}: timestamp")), "{line}");
        } else {
            assert_eq!(line["result"], "stored", "{line}");
        }
    }
    assert_eq!(out[n as usize]["summary"]["accepted"], n - rejected);
    assert_eq!(out[n as usize]["summary"]["rejected"], rejected);
    let pg = audit_testkit::sql(&db.url).await;
    let stored: i64 = pg.query_one("SELECT count(DISTINCT action) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(stored as u64, n - rejected);
}

#[tokio::test]
async fn every_read_is_recorded_in_the_readers_organisation_and_probes_answer() {
    let db = migrated("http_access").await;
    let svc = Service::start::<&str, &str>(&db, &[]).await;
    let created = create_key(&db, "org_a", "ingest,query");
    let key = created["key"].as_str().unwrap();
    let (code, _) = svc.post(key, "/v1/events", &event("org_a", "read_chart")).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, _) = svc.get(key, "/v1/events?action=read_chart").await;
    assert_eq!(code, StatusCode::OK);
    let (_, page) = svc.get(key, "/v1/events?action=audit_log_access").await;
    let access = &page["events"][0];
    assert_eq!(access["organization_id"], "org_a", "{page}");
    assert_eq!(access["principal_id"], format!("api-key:{}", created["id"].as_str().unwrap()));
    assert_eq!(access["details"]["filter"], json!({"action": ["read_chart"], "org": "org_a"}), "{access}");
    assert_eq!(access["details"]["route"], "GET /v1/events");

    let r = svc.http.get(svc.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"), "request ids are set");
    let ready: Value = r.json().await.unwrap();
    assert_eq!((ready["ready"].as_bool(), ready["breaker"].as_str()), (Some(true), Some("closed")), "{ready}");
    assert_eq!(svc.http.get(svc.url("/health")).send().await.unwrap().status(), StatusCode::OK);
    // The container HEALTHCHECK's command (deploy/Dockerfile).
    let o = cli::command(&["health", "--service", &svc.base]).output().unwrap();
    cli::ok(&o, "health --service");
    let o = cli::command(&["health", "--service", &format!("http://127.0.0.1:{}", free_port())]).output().unwrap();
    assert!(!o.status.success(), "nothing listening: unhealthy");
    let metrics = svc.http.get(svc.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("audit_db_http_requests_total{"), "HTTP requests are counted");
    let r = svc.http.get(svc.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Examples schemathesis generates per operation (recorded in docs/api.md).
const SCHEMATHESIS_EXAMPLES: &str = "30";

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let db = migrated("http_schemathesis").await;
    let keydir = tempfile::tempdir().unwrap();
    cli::ok(&cli::run_offline(&["keygen", "--out", keydir.path().to_str().unwrap()]), "keygen");
    let signing = keydir.path().join("signing.key");
    let svc = Service::start(&db, &[NO_AUDIT, ("AUDIT_DB_SIGNING_KEY_FILE", signing.to_str().unwrap())]).await;
    let key = key_of(&db, "org_a", "ingest,query,verify");
    let (code, _) = svc.post(&key, "/v1/events", &event("org_a", "seed")).await;
    assert_eq!(code, StatusCode::CREATED);
    let mut st = tokio::process::Command::new("schemathesis");
    st.args(["run", &svc.url("/openapi.json"), "--url", &svc.base])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // The streamed NDJSON batch has no schemathesis serializer (its own tests above cover it). The coverage
        // phase is left out: on CPython 3.11.7 it crashes inside hypothesis (`ast.parse` recursion-depth
        // SystemError while describing a lambda), which says nothing about the API.
        .args(["--exclude-path", "/v1/events:batch"])
        .args(["--max-examples", SCHEMATHESIS_EXAMPLES, "--phases", "examples,fuzzing", "--workers", "2"])
        .args(["--request-timeout", "10", "--seed", "7"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(90), st.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("schemathesis does not run ({e}); `.ci/run` installs it: pip install schemathesis"),
        Err(_) => panic!("schemathesis took longer than 90 s"),
    };
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("generated") && !text.contains("0 generated"), "schemathesis tested something:\n{text}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writes_commit_lsn_header_makes_another_instance_read_it_from_a_late_replica() {
    let primary = audit_testkit::cluster::start_private_cluster().await.expect("primary");
    let url = primary.url();
    cli::ok(&cli::run(&url, &[], &["migrate"]), "migrate");
    let replica = primary.create_replica().await.expect("replica");
    let replica_url = replica.url();
    let key = cli::json_of(
        &url,
        &[],
        &["api-keys", "create", "--org", "org_a", "--scopes", "ingest,query", "--format", "json"],
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    // The writer talks to the primary only; the reader routes reads to a replica that applies WAL 3 s late.
    let writer = Service::start_at(&url, &[NO_AUDIT]).await;
    let reader = Service::start_at(&url, &[NO_AUDIT, ("AUDIT_DB_READ_REPLICA_1", &replica_url)]).await;
    audit_testkit::replication::set_apply_delay(&replica_url, Duration::from_secs(3)).await;
    let mut eventual_misses = 0;
    for i in 0..10 {
        let r = writer
            .http
            .post(writer.url("/v1/events"))
            .bearer_auth(&key)
            .json(&event("org_a", &format!("w{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let lsn = r.headers()["x-audit-commit-lsn"].to_str().unwrap().to_string();
        let id = r.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_string();
        let eventual = reader
            .http
            .get(reader.url(&format!("/v1/events/{id}")))
            .bearer_auth(&key)
            .header("X-Audit-Consistency", "eventual")
            .send()
            .await
            .unwrap();
        eventual_misses += usize::from(eventual.status() == StatusCode::NOT_FOUND);
        let at_lsn = reader
            .http
            .get(reader.url(&format!("/v1/events/{id}")))
            .bearer_auth(&key)
            .header("X-Audit-Min-LSN", &lsn)
            .send()
            .await
            .unwrap();
        assert_eq!(at_lsn.status(), StatusCode::OK, "round trip {i}: a read at the write's commit LSN sees it");
    }
    assert!(eventual_misses > 0, "eventual reads on a replica 3 s late miss fresh events (so the header mattered)");
    audit_testkit::replication::set_apply_delay(&replica_url, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_insert_queue_answers_429_with_retry_after_and_stores_exactly_the_acknowledged_events() {
    let db = migrated("http_backpressure").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("audit-db.toml");
    std::fs::write(&config, "[ingest]\nqueueCapacity = 2\nbatchMaxEvents = 1\n").unwrap();
    let svc = Service::start(&db, &[NO_AUDIT, ("AUDIT_DB_CONFIG", config.to_str().unwrap())]).await;
    let key = key_of(&db, "org_a", "ingest,query");
    let sends = (0..200).map(|i| {
        let (http, url, key) = (svc.http.clone(), svc.url("/v1/events"), key.clone());
        tokio::spawn(async move {
            let r = http.post(url).bearer_auth(key).json(&event("org_a", &format!("burst_{i}"))).send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (r.status(), retry_after, r.json::<Value>().await.unwrap())
        })
    });
    let (mut stored, mut refused) = (0, 0);
    for s in futures::future::join_all(sends).await {
        let (status, retry_after, body) = s.unwrap();
        match status {
            StatusCode::CREATED => stored += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                assert!(body["type"].as_str().unwrap().ends_with("/overloaded"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "200 concurrent inserts overflow a queue of 2");
    let (_, page) = svc.get(&key, "/v1/events?limit=1000").await;
    assert_eq!(page["events"].as_array().unwrap().len(), stored, "exactly the acknowledged events are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_batch_before_the_service_exits() {
    let db = migrated("http_drain").await;
    let mut svc = Service::start(&db, &[NO_AUDIT]).await;
    let key = key_of(&db, "org_a", "ingest,query");
    let n = 15_000;
    let body: String = (0..n).map(|i| format!("{}\n", event("org_a", &format!("drain_{i}")))).collect();
    let (http, url, k) = (svc.http.clone(), svc.url("/v1/events:batch"), key.clone());
    let in_flight = tokio::spawn(async move { http.post(url).bearer_auth(k).body(body).send().await?.text().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = svc.child.id().expect("the service runs").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let answer = in_flight.await.unwrap().expect("the in-flight request is answered, not cut off");
    let summary: Value = serde_json::from_str(answer.lines().last().unwrap()).unwrap();
    assert_eq!(summary["summary"]["accepted"], n, "{summary}");
    let status = tokio::time::timeout(Duration::from_secs(30), svc.child.wait()).await.expect("it exits").unwrap();
    assert!(status.success(), "a clean exit after draining: {status:?}");
    let pg = audit_testkit::sql(&db.url).await;
    let stored: i64 = pg.query_one("SELECT count(*) FROM audit_log", &[]).await.unwrap().get(0);
    assert_eq!(stored, n as i64);
}
