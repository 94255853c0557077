//! What `GET /ready` answers: ready while the primary answers (replicas only ever degrade the service — their reads
//! go elsewhere), with the primary's and every read replica's state in the body, as `audit-db replicas status` and
//! the health report show them. Kept out of `http/` so that the route's handler stays one call.

use audit_client::HealthReport;
use audit_core::HealthState;
use serde::Serialize;
use serde_json::Value;

/// The readiness answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether the service can take traffic (the primary answers, migrations applied, breaker not open).
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The primary's circuit breaker state (`closed`, `open`, `half_open`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// Migrations this binary has that the database lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_migrations: Vec<String>,
    /// The primary's health entry.
    #[schema(value_type = Object)]
    pub primary: Value,
    /// Each read replica's health entry (`replica:<id>`), in name order.
    #[schema(value_type = Vec<Object>)]
    pub replicas: Vec<Value>,
}

impl Readiness {
    /// Adds the service's own gates: a schema behind the code, or an open primary breaker, make it unready even
    /// when the primary answers a probe.
    pub fn with_gates(mut self, breaker_open: bool, breaker: &str, pending: Result<Vec<String>, String>) -> Self {
        if !self.ready {
            self.reasons.push("primary database unavailable".into());
        }
        self.breaker = Some(breaker.to_string());
        if breaker_open {
            self.ready = false;
            self.reasons.push("the primary's circuit breaker is open".into());
        }
        match pending {
            Ok(p) if p.is_empty() => {}
            Ok(p) => {
                self.ready = false;
                self.reasons.push(format!("{} migration(s) not applied: run `audit-db migrate`", p.len()));
                self.pending_migrations = p;
            }
            Err(e) => {
                self.ready = false;
                self.reasons.push(format!("cannot read applied migrations: {e}"));
            }
        }
        self
    }
}

/// Readiness from a health report.
pub fn readiness(report: &HealthReport) -> Readiness {
    let primary = report.components.get("primary");
    let entry = |c: &audit_core::ComponentHealth| serde_json::to_value(c).unwrap_or(Value::Null);
    Readiness {
        reasons: Vec::new(),
        breaker: None,
        pending_migrations: Vec::new(),
        ready: primary.is_some_and(|c| c.status == HealthState::Healthy),
        primary: primary.map_or(Value::Null, entry),
        replicas: report.components.iter().filter(|(k, _)| k.starts_with("replica:")).map(|(_, c)| entry(c)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::ComponentHealth;
    use std::collections::BTreeMap;

    fn component(name: &str, status: HealthState) -> (String, ComponentHealth) {
        (name.to_string(), ComponentHealth { name: name.into(), status, details: serde_json::json!({}) })
    }

    #[test]
    fn the_primary_decides_and_replicas_are_listed() {
        let components: BTreeMap<_, _> = [
            component("primary", HealthState::Healthy),
            component("replica:replica-1", HealthState::Unhealthy),
            component("replica:replica-2", HealthState::Healthy),
            component("cache", HealthState::Healthy),
        ]
        .into_iter()
        .collect();
        let report = HealthReport { overall: HealthState::Degraded, components, metrics: Value::Null };
        let r = readiness(&report);
        assert!(r.ready, "a replica down does not make the service unready");
        let names: Vec<&str> = r.replicas.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["replica:replica-1", "replica:replica-2"]);
        assert_eq!(r.replicas[0]["status"], "unhealthy");

        let mut down = report.clone();
        down.components.insert("primary".into(), component("primary", HealthState::Unhealthy).1);
        assert!(!readiness(&down).ready);
        let gated = readiness(&report).with_gates(true, "open", Ok(vec![]));
        assert!(!gated.ready && gated.reasons[0].contains("breaker"), "{gated:?}");
        let gated = readiness(&report).with_gates(false, "closed", Ok(vec!["x_api_keys".into()]));
        assert!(!gated.ready && gated.pending_migrations == ["x_api_keys"], "{gated:?}");
        assert!(readiness(&report).with_gates(false, "closed", Ok(vec![])).ready);
        assert_eq!(readiness(&down).primary["status"], "unhealthy");
    }
}
