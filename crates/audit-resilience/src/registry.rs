//! Named breakers, one per dependency, shared by every caller of that dependency.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use audit_core::ComponentHealth;

use crate::breaker::{Breaker, BreakerSettings, BreakerStatus};
use crate::config::CircuitBreakerConfig;

/// The well-known breaker names, so that logs, metrics labels and the health report agree.
pub mod names {
    /// The primary database.
    pub const PRIMARY: &str = "primary";
    /// Redis (L2 cache).
    pub const REDIS: &str = "redis";
    /// Maintenance jobs (partition creation, retention, index work).
    pub const MAINTENANCE: &str = "maintenance";

    /// The read replica with this id (`replica-1` for `AUDIT_DB_READ_REPLICA_1`, or a `[[replicas]]` id):
    /// `replica:<id>`, as its pool's errors and the `audit_db_circuit_breaker_state` label name it.
    pub fn replica(id: &str) -> String {
        format!("replica:{id}")
    }
}

/// All breakers of a process, created on first use with common settings. Two callers asking for the same name get
/// the same breaker, so one dependency's health is judged from all its traffic.
#[derive(Debug)]
pub struct BreakerRegistry {
    settings: BreakerSettings,
    breakers: RwLock<BTreeMap<String, Arc<Breaker>>>,
}

impl BreakerRegistry {
    /// An empty registry whose breakers use `settings`.
    pub fn new(settings: BreakerSettings) -> Self {
        Self { settings, breakers: RwLock::new(BTreeMap::new()) }
    }

    /// An empty registry with settings from `[circuitBreaker]`.
    pub fn from_config(cfg: &CircuitBreakerConfig) -> Self {
        Self::new(BreakerSettings::from_config(cfg))
    }

    /// The settings new breakers get.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// The breaker named `name`, created closed if it does not exist yet.
    pub fn get_or_create(&self, name: &str) -> Arc<Breaker> {
        if let Some(b) = self.get(name) {
            return b;
        }
        let mut map = self.breakers.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_string()).or_insert_with(|| Arc::new(Breaker::new(name, &self.settings))).clone()
    }

    /// The breaker named `name`, if one was created.
    pub fn get(&self, name: &str) -> Option<Arc<Breaker>> {
        self.breakers.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Status of every breaker, ordered by name.
    pub fn statuses(&self) -> Vec<BreakerStatus> {
        let breakers: Vec<Arc<Breaker>> =
            self.breakers.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        breakers.iter().map(|b| b.status()).collect()
    }

    /// Every breaker as a health-report entry (`breaker:<name>`), ordered by name.
    pub fn health(&self) -> Vec<ComponentHealth> {
        self.statuses().iter().map(BreakerStatus::to_health).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BreakerState;
    use audit_core::{AuditError, HealthState};

    #[test]
    fn same_name_same_breaker_and_health_per_breaker() {
        let reg = BreakerRegistry::from_config(&CircuitBreakerConfig { failure_threshold: 1, ..Default::default() });
        let p = reg.get_or_create(names::PRIMARY);
        assert!(Arc::ptr_eq(&p, &reg.get_or_create("primary")));
        reg.get_or_create(&names::replica("replica-1"));
        reg.get_or_create(names::REDIS);
        assert!(reg.get(names::MAINTENANCE).is_none());
        p.try_acquire().unwrap().failed(&AuditError::unavailable("gone"));
        let health = reg.health();
        let summary: Vec<_> = health.iter().map(|h| (h.name.as_str(), h.status)).collect();
        assert_eq!(
            summary,
            [
                ("breaker:primary", HealthState::Unhealthy),
                ("breaker:redis", HealthState::Healthy),
                ("breaker:replica:replica-1", HealthState::Healthy)
            ]
        );
        assert_eq!(reg.statuses()[0].state, BreakerState::Open);
    }
}
