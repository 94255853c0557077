//! FHIR paging through the HTTP service: `GET /v1/events?format=fhir` (or `Accept: application/fhir+json`) answers a
//! page as a Bundle with `Bundle.link` `self` and `next`; following `next` walks every matching event exactly once,
//! with the other filters kept, and every page the API serves validates with the independent PyPI package
//! `fhir.resources` (audit-fhir's tests/validate_fhir.py) — with the personal-data policy on, so the values are
//! the decrypted ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use audit_testkit::TestDb;
use chrono::{Duration, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "support/cli.rs"]
mod cli;
#[path = "../../audit-fhir/tests/common/mod.rs"]
mod common;
#[path = "support/service.rs"]
mod service;
use service::Service;

const ORG: &str = "north-clinic";

fn link<'a>(bundle: &'a Value, relation: &str) -> Option<&'a str> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_next_links_walks_every_event_once_and_every_page_validates() {
    let db = TestDb::create("http_fhir_paging").await;
    let dir = tempfile::tempdir().unwrap();
    cli::ok(&cli::run(&db.url, &[], &["migrate"]), "migrate");
    let keys = dir.path().join("keys");
    cli::ok(&cli::run_offline(&["keygen", "--master", "--out", keys.to_str().unwrap()]), "keygen --master");
    let master = keys.join("master.key");
    let env = [
        ("AUDIT_DB_MASTER_KEY_FILE", master.to_str().unwrap()),
        ("AUDIT_DB_PERSONAL_FIELDS", "principal_id,target_resource_id,details.patient_name"),
    ];

    // 23 events, some sharing a timestamp (the cursor must split ties), and 5 of another action (filtered out).
    let base = Utc::now() - Duration::minutes(30);
    let mut lines = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..28 {
        let id = Uuid::new_v4();
        let action = if i < 23 { "patient_data_access" } else { "login" };
        if i < 23 {
            expected.insert(id.to_string());
        }
        let at = base + Duration::seconds((i / 3) as i64);
        lines.push(json!({
            "event_id": id, "action": action, "status": "success",
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Micros, true), "organization_id": ORG,
            "principal_id": format!("dr-{}", i % 4), "data_classification": "PHI",
            "target_resource_type": "patient_record", "target_resource_id": format!("patient-{i}"),
            "details": {"patient_name": format!("Patient Number {i}"), "i": i},
        }));
    }
    let file = cli::write_lines(dir.path(), "events.ndjson", &lines);
    cli::ok(&cli::run(&db.url, &env, &["ingest", file.to_str().unwrap()]), "ingest");

    let svc = Service::start(&db, &env).await;
    let query = cli::json_of(
        &db.url,
        &[],
        &["api-keys", "create", "--org", ORG, "--scopes", "query", "--name", "t", "--format", "json"],
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The first page asked by Accept header; the links carry format=fhir, so the next ones need no header.
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut url = "/v1/events?action=patient_data_access&limit=10".to_string();
    let mut accept = true;
    let mut previous_next: Option<String> = None;
    loop {
        let mut req = svc.http.get(svc.url(&url)).bearer_auth(&query);
        if accept {
            req = req.header("accept", "application/fhir+json");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        assert_eq!(r.headers()["content-type"], "application/fhir+json");
        let header_cursor = r.headers().get("x-audit-next-cursor").map(|v| v.to_str().unwrap().to_string());
        let bundle: Value = r.json().await.unwrap();
        assert_eq!((bundle["resourceType"].as_str(), bundle["type"].as_str()), (Some("Bundle"), Some("collection")));
        let self_url = link(&bundle, "self").expect("every page links itself");
        if let Some(prev) = &previous_next {
            assert_eq!(self_url, prev, "a page's self link is the link that led to it");
        }
        for e in bundle["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
            assert!(e["resource"]["entity"].to_string().contains("patient-"), "decrypted values: {e}");
        }
        let path = dir.path().join(format!("page{}.json", pages.len()));
        std::fs::write(&path, bundle.to_string()).unwrap();
        pages.push(path);
        match link(&bundle, "next") {
            Some(next) => {
                assert!(next.starts_with("/v1/events?"), "{next}");
                assert!(
                    next.contains("action=patient_data_access") && next.contains("limit=10"),
                    "filters kept: {next}"
                );
                assert!(next.contains("format=fhir"), "{next}");
                let cursor = next.split('&').find_map(|p| p.strip_prefix("after=")).expect("next has a cursor");
                assert_eq!(header_cursor.as_deref(), Some(cursor), "the header and the link agree");
                url = next.to_string();
                previous_next = Some(next.to_string());
                accept = false;
            }
            None => {
                assert_eq!(header_cursor, None, "the last page has no next cursor");
                break;
            }
        }
        assert!(pages.len() <= 5, "paging ends");
    }
    assert_eq!(pages.len(), 3, "23 events in pages of 10");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), unique.len(), "no event twice: {seen:?}");
    assert_eq!(unique, expected, "every matching event, and only those");

    // The API's Bundles, links included, are valid FHIR R4 for an independent library: 3 Bundles + 23 entries.
    let pages: Vec<&Path> = pages.iter().map(PathBuf::as_path).collect();
    assert_eq!(common::validate_with_fhir_resources(&pages), "validated 26 resources");
}
