//! FHIR input shared by `audit-db ingest --format fhir` and the HTTP service's `POST /fhir/AuditEvent`: one place
//! that turns a request body or file into events, each with where it came from, so both name a bad resource alike.

use audit_fhir::FhirError;
use serde_json::Value;

/// The events of a FHIR input, each with where it came from (`Bundle.entry[3]`, `line 7`) and its mapping:
/// a Bundle (any type) or one AuditEvent as a JSON document, or FHIR bulk NDJSON (one AuditEvent per line).
pub fn fhir_events(text: &str) -> Vec<(String, Result<Value, FhirError>)> {
    if let Ok(doc) = serde_json::from_str::<Value>(text) {
        if doc.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            let entries = doc.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
            return entries
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let at = format!("Bundle.entry[{i}]");
                    let r = match entry.get("resource") {
                        Some(res) => audit_fhir::from_audit_event(res)
                            .map_err(|e| FhirError { path: format!("{at}.resource/{}", e.path), reason: e.reason }),
                        None => Err(FhirError { path: format!("{at}.resource"), reason: "missing".into() }),
                    };
                    (at, r)
                })
                .collect();
        }
        return vec![("resource".to_string(), audit_fhir::from_audit_event(&doc))];
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let at = format!("line {}", i + 1);
            let r = serde_json::from_str::<Value>(l)
                .map_err(|e| FhirError { path: "AuditEvent".into(), reason: format!("not JSON: {e}") })
                .and_then(|v| audit_fhir::from_audit_event(&v));
            (at, r)
        })
        .collect()
}
