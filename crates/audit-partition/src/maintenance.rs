//! Maintenance = premake + retention + analysis, run by at most one instance at a time.

use std::sync::Arc;
use std::time::Duration;

use audit_core::AuditResult;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::db;
use crate::manager::PartitionManager;
use crate::retention::{RetentionReport, try_lock, unlock};
use crate::status::PartitionAnalysis;

/// What one `maintain()` call did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaintenanceReport {
    /// Who ran it (the manager's actor).
    pub instance: String,
    /// `false` when another instance held the maintenance lock and this call did nothing.
    pub ran: bool,
    /// Why it did not run.
    pub skipped_reason: Option<String>,
    /// Partitions created by premake.
    pub created: Vec<String>,
    /// The retention run (a dry run when no archive is configured).
    pub retention: Option<RetentionReport>,
    /// The analysis after premake and retention.
    pub analysis: Option<PartitionAnalysis>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl PartitionManager {
    /// Premake, retention and analysis under `pg_try_advisory_lock` held on a dedicated connection. When another
    /// instance holds the lock this returns at once with `ran: false` and the reason. Without an archive,
    /// retention runs as a dry run (nothing is dropped) and says so in its notes.
    pub async fn maintain(&self) -> AuditResult<MaintenanceReport> {
        let started_at = Utc::now();
        let lock = db::connect(&self.url, "audit-partition-lock").await?;
        if !try_lock(&lock).await? {
            tracing::info!("partition maintenance skipped: another instance holds the lock");
            metrics::counter!("audit_partition_maintenance_skipped_total").increment(1);
            return Ok(MaintenanceReport {
                instance: self.actor.clone(),
                ran: false,
                skipped_reason: Some("another instance holds the partition maintenance lock".into()),
                created: Vec::new(),
                retention: None,
                analysis: None,
                started_at,
                finished_at: Utc::now(),
            });
        }
        let res = self.maintain_locked(started_at).await;
        unlock(&lock).await;
        drop(lock);
        metrics::counter!("audit_partition_maintenance_runs_total").increment(1);
        res
    }

    async fn maintain_locked(&self, started_at: DateTime<Utc>) -> AuditResult<MaintenanceReport> {
        let mut work = db::connect(&self.url, "audit-partition-maintenance").await?;
        let now = Utc::now();
        let created = self.premake_on(&mut work, now).await?;
        let retention = match self.archive.clone() {
            Some(archive) => self.run_retention(&mut work, archive, now).await?,
            None => self.plan_report(&work, now).await?,
        };
        self.refresh_known(&work).await?;
        let analysis = self.analyze_on(&work, Utc::now()).await?;
        let report = MaintenanceReport {
            instance: self.actor.clone(),
            ran: true,
            skipped_reason: None,
            created,
            retention: Some(retention),
            analysis: Some(analysis),
            started_at,
            finished_at: Utc::now(),
        };
        tracing::info!(created = report.created.len(), "partition maintenance finished");
        Ok(report)
    }

    /// Runs [`Self::maintain`] every `interval` until the handle is aborted; failures are logged and retried at
    /// the next tick.
    pub fn spawn_maintenance(self: Arc<Self>, interval: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match self.maintain().await {
                    Ok(r) if r.ran => tracing::debug!(created = r.created.len(), "background maintenance ran"),
                    Ok(r) => tracing::debug!(reason = ?r.skipped_reason, "background maintenance skipped"),
                    Err(e) => tracing::warn!(error = %e, "background partition maintenance failed"),
                }
            }
        })
    }
}
