//! What `GET /ready` answers: ready while the primary answers (replicas only ever degrade the service — their reads
//! go elsewhere), with the primary's and every read replica's state in the body, as `audit-db replicas status` and
//! the health report show them. Kept out of `http/` so that the route's handler stays one call.

use audit_client::HealthReport;
use audit_core::HealthState;
use serde::Serialize;
use serde_json::Value;

/// The readiness answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// Whether the service can take traffic (the primary answers).
    pub ready: bool,
    /// The primary's health entry.
    pub primary: Value,
    /// Each read replica's health entry (`replica:<id>`), in name order.
    pub replicas: Vec<Value>,
}

/// Readiness from a health report.
pub fn readiness(report: &HealthReport) -> Readiness {
    let primary = report.components.get("primary");
    let entry = |c: &audit_core::ComponentHealth| serde_json::to_value(c).unwrap_or(Value::Null);
    Readiness {
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
        assert_eq!(readiness(&down).primary["status"], "unhealthy");
    }
}
