//! FHIR R4 AuditEvent through the `audit-db` binary against a real PostgreSQL: `export --format fhir|fhir-ndjson`
//! of the seed's examples and 1,200 generated events validates with the independent PyPI package `fhir.resources`
//! (tests/validate_fhir.py of audit-fhir); `ingest --format fhir` of that export into another database gives back
//! every mapped field of every event; an HL7 example ingests and exports back; a bad Bundle entry is named and the
//! good ones beside it are stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use audit_testkit::TestDb;
use serde_json::{Value, json};

#[path = "support/cli.rs"]
mod cli;
use cli::{json_lines, ok, stderr, stdout};

#[allow(unreachable_pub)]
#[path = "../../audit-fhir/tests/common/mod.rs"]
mod common;

fn fhir_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../audit-fhir/tests")
}

fn run(db: &TestDb, args: &[&str]) -> Output {
    cli::run(&db.url, &[], args)
}

/// Every stored event by event_id, without what the store assigned (row id, ingest time, seq, leaf hash).
fn events_by_id(db: &TestDb) -> BTreeMap<String, Value> {
    let o = run(db, &["query", "--limit", "10000"]);
    ok(&o, "query");
    json_lines(&o)
        .into_iter()
        .map(|mut v| {
            let m = v.as_object_mut().unwrap();
            for k in ["id", "ingested_at", "seq", "leaf_hash"] {
                m.remove(k);
            }
            (m["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_export_validates_and_ingest_gives_every_field_back() {
    let source = TestDb::create("cli_fhir_source").await;
    let target = TestDb::create("cli_fhir_target").await;
    let dir = tempfile::tempdir().unwrap();
    ok(&run(&source, &["migrate"]), "migrate source");
    ok(&run(&target, &["migrate"]), "migrate target");

    let events: Vec<Value> =
        common::seed_examples().into_iter().chain(common::generated().into_iter().take(1_200)).collect();
    let n = events.len();
    let file = cli::write_lines(dir.path(), "events.ndjson", &events);
    let o = run(&source, &["ingest", file.to_str().unwrap()]);
    ok(&o, "ingest");
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": n, "rejected": 0, "duplicates": 0}));

    // Export as a Bundle and as bulk NDJSON; fhir.resources validates every resource of both.
    let bundle_path = dir.path().join("bundle.json");
    let o = run(&source, &["export", "--format", "fhir", "--out", bundle_path.to_str().unwrap()]);
    ok(&o, "export --format fhir");
    assert!(stderr(&o).contains(&format!("exported {n} AuditEvent resources")), "{}", stderr(&o));
    let ndjson_path = dir.path().join("events.fhir.ndjson");
    ok(&run(&source, &["export", "--format", "fhir-ndjson", "--out", ndjson_path.to_str().unwrap()]), "export ndjson");
    common::validate_with_fhir_resources(&[&bundle_path, &ndjson_path]);
    let bundle: Value = serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    assert_eq!(bundle["entry"].as_array().unwrap().len(), n);
    assert_eq!(std::fs::read_to_string(&ndjson_path).unwrap().lines().count(), n);

    // --org and --from narrow the export (to stdout here).
    let o = run(&source, &["export", "--format", "fhir", "--org", "hospital_456", "--from", "2026-11-20T00:00:00Z"]);
    ok(&o, "export --org");
    let one: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entries = one["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "the seed's healthcare example only");
    let r = &entries[0]["resource"];
    assert_eq!(r["source"]["site"], "hospital_456");
    assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "dr_smith_123");
    assert_eq!(r["outcome"], "0");
    let ext: Vec<&str> = r["extension"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert!(ext.iter().any(|u| u.ends_with("leaf-hash")) && ext.iter().any(|u| u.ends_with("/seq")), "{ext:?}");

    // The round trip: ingest the Bundle into another database; every mapped field of every event comes back.
    let o = run(&target, &["ingest", "--format", "fhir", bundle_path.to_str().unwrap()]);
    ok(&o, "ingest --format fhir");
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": n, "rejected": 0, "duplicates": 0}));
    let (before, after) = (events_by_id(&source), events_by_id(&target));
    assert_eq!(before.len(), n);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (id, e) in &before {
        assert_eq!(e, &after[id], "event {id} changed in the FHIR round trip");
    }
    // Again from bulk NDJSON: every event is recognised as already stored.
    let o = run(&target, &["ingest", "--format", "fhir", ndjson_path.to_str().unwrap()]);
    ok(&o, "ingest --format fhir (ndjson)");
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": 0, "rejected": 0, "duplicates": n}));

    // An HL7 specification example ingests, and exports back with the same codes, time and outcome.
    let login = fhir_dir().join("data/AuditEvent-example-login.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&login).unwrap()).unwrap();
    let hl7 = TestDb::create("cli_fhir_hl7").await;
    ok(&run(&hl7, &["migrate"]), "migrate");
    let o = run(&hl7, &["ingest", "--format", "fhir", login.to_str().unwrap()]);
    ok(&o, "ingest HL7 example");
    let o = run(&hl7, &["export", "--format", "fhir-ndjson"]);
    ok(&o, "export HL7 example");
    let back = &json_lines(&o)[0];
    assert_eq!(back["type"]["code"], original["type"]["code"]);
    assert_eq!(back["subtype"][0]["code"], original["subtype"][0]["code"]);
    assert_eq!(back["action"], original["action"]);
    assert_eq!(back["outcome"], original["outcome"]);
    assert_eq!(back["source"]["site"], original["source"]["site"]);
    assert_eq!(back["recorded"].as_str().unwrap()[..19], original["recorded"].as_str().unwrap()[..19]);

    // A Bundle with a bad entry: the entry is named, the good ones beside it are stored.
    let mut bad = bundle.clone();
    bad["entry"] = json!([bundle["entry"][0].clone(), {"resource": {"resourceType": "AuditEvent"}}]);
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let fresh = TestDb::create("cli_fhir_bad").await;
    ok(&run(&fresh, &["migrate"]), "migrate");
    let o = run(&fresh, &["ingest", "--format", "fhir", bad_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "some rejected: {}", stderr(&o));
    assert_eq!(cli::counts(&cli::summary(&o)), json!({"accepted": 1, "rejected": 1, "duplicates": 0}));
    assert!(stderr(&o).contains("Bundle.entry[1]"), "{}", stderr(&o));
}
