//! Every exported resource validates with an independent FHIR library: the PyPI package `fhir.resources`
//! (R4B models), run by tests/validate_fhir.py on the seed's examples and the generated sample (> 7,000 events
//! covering every status, classification and optional-field combination), as a Bundle and as NDJSON.
//!
//! Needs `python3` with fhir.resources: `python3 -m pip install 'fhir.resources==8.3.0'`. Without it the test fails
//! and says so (it never skips).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use audit_fhir::{BundleWriter, ExportContext, to_audit_event, write_ndjson};
use chrono::{DateTime, Utc};
use common::{all_stored, seed_examples, stored, validate};

fn run(files: &[&Path]) -> Output {
    common::run_fhir_validator(files)
}

fn ctx() -> ExportContext {
    ExportContext {
        service: "audit-db".into(),
        bundle_timestamp: Some(DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc)),
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_exported_resource_validates_with_fhir_resources() {
    let dir = tempfile::tempdir().unwrap();
    let events = all_stored();
    let seeds = seed_examples().len();

    let seed_bundle = dir.path().join("seed-examples.bundle.json");
    let mut w = BundleWriter::new(std::fs::File::create(&seed_bundle).unwrap(), &ctx()).unwrap();
    for e in &events[..seeds] {
        w.push(e).unwrap();
    }
    w.finish().unwrap();

    let all_bundle = dir.path().join("all.bundle.json");
    let mut w =
        BundleWriter::new(std::io::BufWriter::new(std::fs::File::create(&all_bundle).unwrap()), &ctx()).unwrap();
    for e in &events {
        w.push(e).unwrap();
    }
    w.finish().unwrap();

    let ndjson = dir.path().join("all.ndjson");
    write_ndjson(std::io::BufWriter::new(std::fs::File::create(&ndjson).unwrap()), &events, &ctx()).unwrap();

    let out = run(&[&seed_bundle, &all_bundle, &ndjson]);
    assert!(out.status.success(), "fhir.resources rejected an exported resource\n{}", describe(&out));
    // Each bundle counts itself plus its entries; NDJSON one per line.
    let expected = (1 + seeds) + (1 + events.len()) + events.len();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("validated {expected} resources"));
}

#[test]
fn the_validator_names_the_first_invalid_resource() {
    // Negative control: proves the script (and so the test above) can fail.
    let dir = tempfile::tempdir().unwrap();
    let good = stored(validate(seed_examples().remove(0)), 0);
    let mut bad = to_audit_event(&stored(validate(seed_examples().remove(1)), 1), &ctx());
    bad["source"].as_object_mut().unwrap().remove("observer");
    let file = dir.path().join("mixed.ndjson");
    let lines = [to_audit_event(&good, &ctx()).to_string(), bad.to_string()];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let out = run(&[&file]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = bad["id"].as_str().unwrap();
    assert!(stderr.contains(&format!("mixed.ndjson:2 AuditEvent/{id}")), "{stderr}");
    assert!(stderr.contains("source.observer"), "{stderr}");
}

#[test]
fn an_invalid_bundle_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = seed_examples().into_iter().enumerate().map(|(n, v)| stored(validate(v), n as i64)).collect();
    let mut bundle = audit_fhir::bundle_collection(&events, &ctx());
    bundle["entry"][2]["resource"]["recorded"] = "2026-11-20".into();
    let file = dir.path().join("bad.bundle.json");
    std::fs::write(&file, bundle.to_string()).unwrap();

    let out = run(&[&file]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = events[2].event.event_id;
    assert!(stderr.contains(&format!("bad.bundle.json entry[2] AuditEvent/{id}")), "{stderr}");
    assert!(stderr.contains("recorded"), "{stderr}");
}

#[test]
fn hl7_examples_and_their_reexports_validate() {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut originals = Vec::new();
    let mut lines = String::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let resource: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let event = validate(audit_fhir::from_audit_event(&resource).unwrap());
            lines.push_str(&to_audit_event(&stored(event, 0), &ctx()).to_string());
            lines.push('\n');
            originals.push(path);
        }
    }
    assert_eq!(originals.len(), 9, "the nine R4 AuditEvent examples");
    let reexports = dir.path().join("hl7-reexports.ndjson");
    std::fs::write(&reexports, lines).unwrap();
    let mut files: Vec<&Path> = originals.iter().map(PathBuf::as_path).collect();
    files.push(&reexports);
    let out = run(&files);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "validated 18 resources");
}
