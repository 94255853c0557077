//! The health report, as the seed's `getHealthStatus()` shaped it: `overall`, `components`, `metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use audit_core::ReadRouter;
use audit_core::traits::{ComponentHealth, HealthState, PartitionProvisioner, QueryCache, ResiliencePolicy};
use audit_pg::{PooledConn, checkout, pg_error};
use serde::Serialize;

use crate::client::AuditClient;

/// How long the health check waits for the primary to answer `SELECT 1`.
const PING_DEADLINE: Duration = Duration::from_secs(5);

/// The health report.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Worst state that matters: the primary decides between healthy and unhealthy; every other component can
    /// only degrade the service (the database still answers without them).
    pub overall: HealthState,
    /// Per component.
    pub components: BTreeMap<String, ComponentHealth>,
    /// Counters and rates since start (reads and writes).
    pub metrics: serde_json::Value,
}

impl<P, C, R, Q> AuditClient<P, C, R, Q>
where
    P: PartitionProvisioner,
    C: QueryCache,
    R: ResiliencePolicy,
    Q: ReadRouter<PooledConn>,
{
    /// The health report: primary reachability and latency, writer queue, cache and its dependencies, breakers,
    /// read replicas (`replica:<id>`: only ever degrade the service, reads then go elsewhere), counters.
    pub async fn health(&self) -> HealthReport {
        let mut components = BTreeMap::new();
        let primary = self.primary_health().await;
        components.insert(primary.name.clone(), primary);
        let writer = self.writer_health();
        components.insert(writer.name.clone(), writer);
        let (cache, policy, router) =
            (self.inner.cache.health(), self.inner.policy.health(), self.inner.router.health());
        for c in cache.into_iter().chain(policy).chain(router) {
            components.insert(c.name.clone(), c);
        }
        // A cache that reports no `cache` component of its own (the null cache) still shows its counters.
        components.entry("cache".to_string()).or_insert_with(|| self.cache_counters());
        let overall = components
            .values()
            .map(|c| match (c.name.as_str(), c.status) {
                ("primary", s) => s,
                (_, HealthState::Unhealthy) => HealthState::Degraded,
                (_, s) => s,
            })
            .max()
            .unwrap_or(HealthState::Healthy);
        let s = self.inner.ops.snapshot();
        let metrics = serde_json::json!({
            "events_stored": s.stored,
            "events_duplicate": s.duplicates,
            "events_rejected": s.rejected,
            "write_transactions": s.write_transactions,
            "operations": s.operations,
            "operation_errors": s.errors,
            "successRate": s.success_rate(),
            "averageResponseTime": s.average_ms,
            "cacheHitRatio": self.inner.cache.stats().hit_ratio,
        });
        HealthReport { overall, components, metrics }
    }

    async fn primary_health(&self) -> ComponentHealth {
        let inner = &self.inner;
        let started = Instant::now();
        let target = inner.connector.target();
        let ping = async {
            let conn = checkout(&inner.read_pool, inner.config.database.pool_options().acquire_timeout).await?;
            conn.simple_query("SELECT 1").await.map_err(|e| pg_error(e, "health check"))
        };
        let (status, details) = match tokio::time::timeout(PING_DEADLINE, ping).await {
            Ok(Ok(_)) => (
                HealthState::Healthy,
                serde_json::json!({"latency_ms": started.elapsed().as_secs_f64() * 1e3, "target": target}),
            ),
            Ok(Err(e)) => (HealthState::Unhealthy, serde_json::json!({"error": e.message(), "target": target})),
            Err(_) => (
                HealthState::Unhealthy,
                serde_json::json!({"error": format!("no answer within {} s", PING_DEADLINE.as_secs()), "target": target}),
            ),
        };
        ComponentHealth { name: "primary".into(), status, details }
    }

    fn writer_health(&self) -> ComponentHealth {
        let queued = self.committer.queued();
        let cap = self.inner.config.ingest.queue_capacity;
        ComponentHealth {
            name: "writer".into(),
            status: if queued * 10 >= cap * 9 { HealthState::Degraded } else { HealthState::Healthy },
            details: serde_json::json!({
                "queued": queued,
                "capacity": cap,
                "flushes": self.committer.flushes(),
            }),
        }
    }

    /// The cache's counters as a healthy component.
    fn cache_counters(&self) -> ComponentHealth {
        ComponentHealth {
            name: "cache".into(),
            status: HealthState::Healthy,
            details: serde_json::to_value(self.inner.cache.stats()).unwrap_or_default(),
        }
    }
}
