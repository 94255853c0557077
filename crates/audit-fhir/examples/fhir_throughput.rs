//! Measures the FHIR mapping's cost: export (streamed Bundle and NDJSON) and ingest (map + audit-core validation)
//! of realistic events, single-threaded. Measurement only; nothing is asserted.
//!
//! `cargo run --release -p audit-fhir --example fhir_throughput -- [EVENTS]` (default 200000)

use std::time::Instant;

use audit_core::{StoredEvent, Validator};
use audit_fhir::{BundleWriter, ExportContext, from_audit_event, write_ndjson};
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

fn events(n: usize, now: DateTime<Utc>) -> Vec<StoredEvent> {
    let v = Validator::default();
    (0..n)
        .map(|i| {
            let ts = now - Duration::seconds((n - i) as i64);
            let e = match i % 3 {
                0 => json!({"action": "patient_data_access", "status": "success", "timestamp": ts.to_rfc3339(),
                    "principal_id": format!("dr_{}", i % 500), "organization_id": "hospital_456",
                    "target_resource_type": "patient_record", "target_resource_id": format!("patient_{i}"),
                    "data_classification": "PHI", "retention_policy": "healthcare_7_years",
                    "details": {"fields_accessed": ["name", "dob"], "access_method": "web_portal",
                                "ip_address": "192.168.1.100", "session_id": format!("s{i}")}}),
                1 => json!({"action": "payment_processed", "status": "success", "timestamp": ts.to_rfc3339(),
                    "principal_id": "system_payment_processor", "organization_id": "bank_789",
                    "target_resource_type": "transaction", "target_resource_id": format!("txn_{i}"),
                    "correlation_id": format!("req_{i}"), "data_classification": "FINANCIAL",
                    "details": {"amount": 1250.00, "currency": "USD", "card_last_four": "1234"}}),
                _ => json!({"action": "user_authentication", "status": if i % 13 == 0 { "failure" } else { "success" },
                    "timestamp": ts.to_rfc3339(), "principal_id": format!("user_{}", i % 900),
                    "organization_id": "company_456", "details": {"authentication_method": "multi_factor"}}),
            };
            let event = v.validate_value(e, now).expect("valid event");
            StoredEvent { id: i as i64 + 1, ingested_at: ts, seq: i as i64, leaf_hash: [7; 32], event }
        })
        .collect()
}

fn rate(label: &str, n: usize, bytes: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<34} {n} events in {secs:.3} s = {:>9.0} events/s ({:.1} MB, {:.0} B/event)",
        n as f64 / secs,
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|a| a.parse().expect("EVENTS is a number")).unwrap_or(200_000);
    let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc);
    let stored = events(n, now);
    let ctx = ExportContext::default();

    // Baseline: audit-db's own NDJSON row format (what `audit-db query` prints), for a ratio that survives a busy
    // machine.
    let start = Instant::now();
    let mut plain = Vec::with_capacity(n * 1024);
    for e in &stored {
        serde_json::to_writer(&mut plain, &e.to_json()).unwrap();
        plain.push(b'\n');
    }
    rate("baseline: audit-db NDJSON (to_json)", n, plain.len(), start);

    let start = Instant::now();
    let mut w = BundleWriter::new(Vec::with_capacity(n * 2048), &ctx).unwrap();
    for e in &stored {
        w.push(e).unwrap();
    }
    let bundle = w.finish().unwrap();
    rate("export Bundle (BundleWriter)", n, bundle.len(), start);

    let start = Instant::now();
    let ndjson = write_ndjson(Vec::with_capacity(n * 2048), &stored, &ctx).unwrap();
    rate("export NDJSON", n, ndjson.len(), start);

    let lines: Vec<&[u8]> = ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let validator = Validator::default();
    let start = Instant::now();
    for line in &lines {
        let resource: serde_json::Value = serde_json::from_slice(line).unwrap();
        let event = from_audit_event(&resource).unwrap();
        validator.validate_value(event, now).unwrap();
    }
    rate("ingest NDJSON (parse+map+validate)", n, ndjson.len(), start);
}
