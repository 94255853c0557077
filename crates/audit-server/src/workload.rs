//! A deterministic, realistic audit workload: the seed's healthcare, finance and authentication events across
//! hundreds of organisations and tens of thousands of principals, with ~200-byte details. Used by `audit-db demo`
//! and by `cargo xtask bench`, so both exercise the same shapes of data.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

/// Sizes of the generated population.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadShape {
    /// Number of organisations (hospitals, banks, companies in equal thirds).
    pub organizations: u32,
    /// Number of principals.
    pub principals: u32,
    /// Events are spread over this many days before `now`…
    pub span_days: i64,
    /// …except this share (0–1), placed within the last hour so "last hour" questions have answers.
    pub last_hour_share: f64,
}

impl Default for WorkloadShape {
    fn default() -> Self {
        Self { organizations: 300, principals: 50_000, span_days: 60, last_hour_share: 0.02 }
    }
}

/// Generates events as NDJSON-ready JSON objects (the seed's snake_case field names).
#[derive(Debug)]
pub struct Workload {
    rng: StdRng,
    shape: WorkloadShape,
    now: DateTime<Utc>,
}

/// Organisation id of the `i`-th organisation; its kind follows from `i % 3`.
pub fn organization(i: u32) -> String {
    match i % 3 {
        0 => format!("hospital_{i:04}"),
        1 => format!("bank_{i:04}"),
        _ => format!("company_{i:04}"),
    }
}

const CLINICAL_ACTIONS: &[&str] =
    &["patient_data_access", "patient_record_update", "prescription_write", "lab_result_view"];
const FINANCE_ACTIONS: &[&str] = &["payment_processed", "refund_issued", "account_transfer"];
const AUTH_ACTIONS: &[&str] = &["user_authentication", "user_logout", "password_reset", "mfa_challenge"];
const FIELDS: &[&str] = &["name", "dob", "medical_history", "ssn", "allergies", "medications", "address"];
const METHODS: &[&str] = &["web_portal", "mobile_app", "ehr_terminal", "api"];

impl Workload {
    /// A generator whose output depends only on `seed`, `shape` and `now`.
    pub fn new(seed: u64, shape: WorkloadShape, now: DateTime<Utc>) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), shape, now }
    }

    fn time(&mut self) -> DateTime<Utc> {
        let micros = if self.rng.gen_bool(self.shape.last_hour_share) {
            self.rng.gen_range(0..3_600_000_000i64)
        } else {
            self.rng.gen_range(0..self.shape.span_days * 86_400_000_000)
        };
        self.now - Duration::microseconds(micros)
    }

    fn ip(&mut self) -> String {
        format!("10.{}.{}.{}", self.rng.gen_range(0..255), self.rng.gen_range(0..255), self.rng.gen_range(1..255))
    }

    /// The next event.
    pub fn next_event(&mut self) -> Value {
        let org_i = self.rng.gen_range(0..self.shape.organizations);
        let org = organization(org_i);
        let principal = format!("user_{:05}", self.rng.gen_range(0..self.shape.principals));
        let ts = self.time().to_rfc3339_opts(SecondsFormat::Micros, true);
        let event_id = Uuid::from_u128(self.rng.r#gen::<u128>() & !(0xf << 76) | (0x4 << 76)).to_string();
        let session = format!("sess_{:08x}", self.rng.r#gen::<u32>());
        match org_i % 3 {
            0 => {
                let action = CLINICAL_ACTIONS[self.rng.gen_range(0..CLINICAL_ACTIONS.len())];
                let n = self.rng.gen_range(1..4);
                let fields: Vec<&str> = (0..n).map(|_| FIELDS[self.rng.gen_range(0..FIELDS.len())]).collect();
                let status = if self.rng.gen_bool(0.03) { "failure" } else { "success" };
                json!({
                    "event_id": event_id,
                    "timestamp": ts,
                    "action": action,
                    "status": status,
                    "principal_id": principal,
                    "organization_id": org,
                    "target_resource_type": "patient_record",
                    "target_resource_id": format!("patient_{:06}", self.rng.gen_range(0..500_000)),
                    "data_classification": "PHI",
                    "retention_policy": "healthcare_7_years",
                    "correlation_id": format!("req_{:010x}", self.rng.r#gen::<u64>() >> 24),
                    "details": {
                        "fields_accessed": fields,
                        "access_method": METHODS[self.rng.gen_range(0..METHODS.len())],
                        "access_reason": if self.rng.gen_bool(0.8) { "treatment" } else { "billing" },
                        "ip_address": self.ip(),
                        "session_id": session,
                    }
                })
            }
            1 => {
                let action = FINANCE_ACTIONS[self.rng.gen_range(0..FINANCE_ACTIONS.len())];
                let cents: u64 = self.rng.gen_range(100..5_000_000);
                json!({
                    "event_id": event_id,
                    "timestamp": ts,
                    "action": action,
                    "status": if self.rng.gen_bool(0.02) { "failure" } else { "success" },
                    "principal_id": "system_payment_processor",
                    "organization_id": org,
                    "target_resource_type": "transaction",
                    "target_resource_id": format!("txn_{:09}", self.rng.gen_range(0..1_000_000_000u64)),
                    "data_classification": "FINANCIAL",
                    "retention_policy": "financial_7_years",
                    "correlation_id": format!("req_{:010x}", self.rng.r#gen::<u64>() >> 24),
                    "processing_latency": self.rng.gen_range(1..400),
                    "details": {
                        "amount": serde_json::from_str::<Value>(&format!("{}.{:02}", cents / 100, cents % 100))
                            .expect("a decimal literal"),
                        "currency": "USD",
                        "payment_method": "credit_card",
                        "card_last_four": format!("{:04}", self.rng.gen_range(0..10_000)),
                        "merchant_id": format!("merchant_{}", self.rng.gen_range(0..5_000)),
                    }
                })
            }
            _ => {
                let action = AUTH_ACTIONS[self.rng.gen_range(0..AUTH_ACTIONS.len())];
                let failed = self.rng.gen_bool(0.08);
                json!({
                    "event_id": event_id,
                    "timestamp": ts,
                    "action": action,
                    "status": if failed { "failure" } else { "success" },
                    "principal_id": principal,
                    "organization_id": org,
                    "data_classification": if self.rng.gen_bool(0.5) { "INTERNAL" } else { "CONFIDENTIAL" },
                    "outcome_description": if failed { Value::from("invalid credentials") } else { Value::Null },
                    "details": {
                        "authentication_method": if self.rng.gen_bool(0.6) { "multi_factor" } else { "password" },
                        "ip_address": self.ip(),
                        "location": "New York, NY, US",
                        "device_fingerprint": format!("device_{:06x}", self.rng.r#gen::<u32>() & 0xff_ffff),
                        "session_id": session,
                    }
                })
            }
        }
    }
}

impl Iterator for Workload {
    type Item = Value;
    fn next(&mut self) -> Option<Value> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::Validator;

    #[test]
    fn the_workload_is_deterministic_valid_and_realistic() {
        let now = Utc::now();
        let a: Vec<Value> = Workload::new(7, WorkloadShape::default(), now).take(2000).collect();
        let b: Vec<Value> = Workload::new(7, WorkloadShape::default(), now).take(2000).collect();
        assert_eq!(a, b);
        let v = Validator::default();
        let mut detail_bytes = 0;
        for e in &a {
            let ev = v.validate_value(e.clone(), now).expect("generated events are valid");
            detail_bytes += serde_json::to_string(&ev.details).unwrap().len();
        }
        let avg = detail_bytes / a.len();
        assert!((120..=300).contains(&avg), "details average {avg} bytes");
    }
}
