//! Events for the integration tests: the seed's examples and a generated sample covering every status,
//! classification and optional-field combination. Events go through audit-core's validator, as in production.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use audit_core::{DataClassification, NewEvent, Status, StoredEvent, Validator};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

/// The validator's clock for every test (events lie before it).
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// Validates an event as `audit-db ingest` does.
pub(crate) fn validate(v: Value) -> NewEvent {
    let text = v.to_string();
    Validator::default().validate_value(v, now()).unwrap_or_else(|e| panic!("invalid event {text}: {e}"))
}

/// A stored event with store-assigned fields derived from `n` (the leaf hash is only carried, never checked).
pub(crate) fn stored(event: NewEvent, n: i64) -> StoredEvent {
    let mut leaf_hash = [0u8; 32];
    for (i, b) in leaf_hash.iter_mut().enumerate() {
        *b = (n as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    StoredEvent {
        id: n + 1,
        ingested_at: event.timestamp + Duration::microseconds(1_500 + n),
        seq: n,
        leaf_hash,
        event,
    }
}

/// The seed document's examples (healthcare, financial, system access), with fixed times. Parsed from JSON
/// text so that numbers keep the seed's spelling (`1250.00`).
pub(crate) fn seed_examples() -> Vec<Value> {
    [SEED_HEALTHCARE, SEED_FINANCIAL, SEED_ACCESS].iter().map(|t| serde_json::from_str(t).unwrap()).collect()
}

const SEED_HEALTHCARE: &str = r#"{
    "action": "patient_data_access",
    "principal_id": "dr_smith_123",
    "organization_id": "hospital_456",
    "target_resource_type": "patient_record",
    "target_resource_id": "patient_789",
    "status": "success",
    "timestamp": "2026-11-20T09:15:00.123456Z",
    "data_classification": "PHI",
    "retention_policy": "healthcare_7_years",
    "details": {
        "fields_accessed": ["name", "dob", "medical_history"],
        "access_method": "web_portal",
        "ip_address": "192.168.1.100",
        "user_agent": "Mozilla/5.0...",
        "session_id": "session_abc123"
    }
}"#;

const SEED_FINANCIAL: &str = r#"{
    "action": "payment_processed",
    "principal_id": "system_payment_processor",
    "organization_id": "bank_789",
    "target_resource_type": "transaction",
    "target_resource_id": "txn_456789",
    "status": "success",
    "timestamp": "2026-11-20T10:00:00Z",
    "correlation_id": "req_abc123",
    "data_classification": "FINANCIAL",
    "retention_policy": "financial_7_years",
    "details": {
        "amount": 1250.00,
        "currency": "USD",
        "payment_method": "credit_card",
        "card_last_four": "1234",
        "merchant_id": "merchant_123",
        "authorization_code": "auth_789"
    }
}"#;

const SEED_ACCESS: &str = r#"{
    "action": "user_authentication",
    "principal_id": "user_alice_123",
    "organization_id": "company_456",
    "status": "failure",
    "timestamp": "2026-11-20T11:30:00+01:00",
    "details": {
        "authentication_method": "multi_factor",
        "factors_used": ["password", "totp"],
        "ip_address": "10.0.0.50",
        "location": "New York, NY, US",
        "device_fingerprint": "device_abc123"
    }
}"#;

/// The optional fields the generated sample switches on and off (one bit each).
pub(crate) const OPTIONAL: [&str; 9] = [
    "principal_id",
    "organization_id",
    "target_resource_type",
    "target_resource_id",
    "outcome_description",
    "correlation_id",
    "ttl",
    "processing_latency",
    "details",
];

const ACTIONS: &[&str] = &[
    "patient_data_access",
    "user_authentication",
    "user_logout",
    "payment_processed",
    "password_reset",
    "mfa_challenge",
    "lab_result_view",
    "prescription_write",
    "patient_record_update",
    "rest.search-type",
    "dicom.application_activity.application_start",
    "fhir|E|urn:example:sys|code%20x",
    "record delete  (bulk) 100%",
    "Ünïcode-Aktion",
];
const IDENTS: &[&str] =
    &["dr_smith_123", "  padded  ", "ünï cødé", "\u{a0}", "100%|pipe/slash", "Patient/1", "\u{2028}\u{3000}"];
const TARGET_TYPES: &[&str] = &["patient_record", "Patient", "transaction", "Observation", "\u{a0}"];
const TARGET_IDS: &[&str] = &["patient_789", "example", "a-1.2/_history/3", "id with spaces", "#o1"];
const OUTCOMES: &[&str] = &["", "Access granted", "\u{b}", "multi\nline\ttext", "\u{a0}\u{2028}", "quote \" and \\"];

fn details_variant(i: usize) -> Value {
    match i % 4 {
        0 => json!({"access_method": "web_portal", "fields_accessed": ["name", "dob"]}),
        1 => serde_json::from_str(r#"{"amount": 1250.00, "card_last_four": "1234", "ratio": -12.5E-2, "big": 123456789012345678901234567890}"#).unwrap(),
        2 => json!({"": "empty key", "\u{a0}": 1, "nested": {"a": [1, 2.50, null, true, {"b": "c"}]}, " k ": false}),
        _ => json!({"text": "http POST ..... ", "json_looking": "{\"a\":1}", "number_string": "1250.00"}),
    }
}

/// Every (status, classification) pair with every subset of [`OPTIONAL`]: 3 × 5 × 512 = 7,680 events. Values
/// cycle through awkward text (padding, exotic whitespace, `%`, `|`, empty outcome) so each encoding path is hit.
pub(crate) fn generated() -> Vec<Value> {
    let mut out = Vec::new();
    let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
    for (si, status) in Status::ALL.into_iter().enumerate() {
        for (ci, class) in DataClassification::ALL.into_iter().enumerate() {
            for mask in 0u32..(1 << OPTIONAL.len()) {
                let i = out.len();
                let ts = base + Duration::microseconds(i as i64 * 7_919_000 + (si * 5 + ci) as i64);
                let mut e = json!({
                    "action": ACTIONS[i % ACTIONS.len()],
                    "status": status.as_str(),
                    "timestamp": ts.to_rfc3339(),
                    "data_classification": class.as_str(),
                });
                if i % 2 == 0 {
                    e["event_id"] =
                        json!(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128).to_string());
                    e["retention_policy"] = json!("healthcare_7_years");
                    e["event_version"] = json!("2.1");
                }
                for (bit, field) in OPTIONAL.iter().enumerate() {
                    if mask & (1 << bit) == 0 {
                        continue;
                    }
                    let k = i / 3 + bit;
                    e[*field] = match *field {
                        "target_resource_type" => json!(TARGET_TYPES[k % TARGET_TYPES.len()]),
                        "target_resource_id" => json!(TARGET_IDS[k % TARGET_IDS.len()]),
                        "outcome_description" => json!(OUTCOMES[k % OUTCOMES.len()]),
                        "ttl" => json!("30d"),
                        "processing_latency" => json!((k * 37) % 5000),
                        "details" => details_variant(k),
                        _ => json!(IDENTS[k % IDENTS.len()]),
                    };
                }
                out.push(e);
            }
        }
    }
    out
}

/// The seed examples followed by the generated sample, validated and stored.
pub(crate) fn all_stored() -> Vec<StoredEvent> {
    seed_examples().into_iter().chain(generated()).enumerate().map(|(n, v)| stored(validate(v), n as i64)).collect()
}

/// `tests/validate_fhir.py`, found from any crate of the workspace that includes this module.
pub(crate) fn fhir_validator_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../audit-fhir/tests/validate_fhir.py")
}

/// Runs the independent validator (PyPI `fhir.resources`) on `files`: the one place it is invoked.
pub(crate) fn run_fhir_validator(files: &[&Path]) -> Output {
    Command::new("python3")
        .arg(fhir_validator_script())
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (needed to validate with fhir.resources): {e}"))
}

/// Fails the test unless every resource in `files` validates; returns the validator's summary line.
pub(crate) fn validate_with_fhir_resources(files: &[&Path]) -> String {
    let out = run_fhir_validator(files);
    assert!(
        out.status.success(),
        "fhir.resources rejects {files:?} (exit {:?})\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
