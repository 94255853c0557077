//! Maintenance = premake + retention + sealing + analysis, run by at most one instance at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use audit_core::{AuditResult, ResiliencePolicy};
use audit_pg::pg_error;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::db::On;
use crate::manager::{MAINTENANCE_LOCK_KEY, PartitionManager};
use crate::retention::RetentionReport;
use crate::seal::SealReport;
use crate::status::PartitionAnalysis;
use audit_core::metrics::MAINTENANCE_RUNS;

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
    /// Partitions sealed by this run (period over: sealed indexes built, frozen, analysed).
    pub sealed: Vec<SealReport>,
    /// The analysis after premake and retention.
    pub analysis: Option<PartitionAnalysis>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Premake, retention, sealing of partitions no longer written, and analysis under `pg_try_advisory_lock` held on a dedicated connection. When another
    /// instance holds the lock this returns at once with `ran: false` and the reason. Without an archive,
    /// retention runs as a dry run (nothing is dropped) and says so in its notes.
    pub async fn maintain(&self) -> AuditResult<MaintenanceReport> {
        let started_at = Utc::now();
        let report = self.with_maintenance_lock(self.maintain_locked(started_at)).await?;
        match report {
            Some(report) => {
                metrics::counter!(MAINTENANCE_RUNS, "result" => "ran").increment(1);
                Ok(report)
            }
            None => {
                tracing::info!("partition maintenance skipped: another instance holds the lock");
                metrics::counter!(MAINTENANCE_RUNS, "result" => "skipped").increment(1);
                Ok(MaintenanceReport {
                    instance: self.actor.clone(),
                    ran: false,
                    skipped_reason: Some("another instance holds the partition maintenance lock".into()),
                    created: Vec::new(),
                    retention: None,
                    sealed: Vec::new(),
                    analysis: None,
                    started_at,
                    finished_at: Utc::now(),
                })
            }
        }
    }

    async fn maintain_locked(&self, started_at: DateTime<Utc>) -> AuditResult<MaintenanceReport> {
        let now = Utc::now();
        let created = self.premake_at(now).await?;
        let retention = match self.archive {
            Some(_) => self.run_retention(now).await?,
            None => self.plan_report(On::Pool, now).await?,
        };
        self.refresh_known(On::Pool).await?;
        let sealed = self.seal_due(now).await?;
        let analysis = self.analyze_on(On::Pool, Utc::now()).await?;
        let report = MaintenanceReport {
            instance: self.actor.clone(),
            ran: true,
            skipped_reason: None,
            created,
            retention: Some(retention),
            sealed,
            analysis: Some(analysis),
            started_at,
            finished_at: Utc::now(),
        };
        tracing::info!(created = report.created.len(), "partition maintenance finished");
        Ok(report)
    }

    /// Runs `work` (a future, so nothing of it runs before it is awaited) while this instance holds the
    /// maintenance lock (session-level `pg_try_advisory_lock` on a connection used for nothing else); `None`
    /// without running it when another instance holds the lock.
    pub(crate) async fn with_maintenance_lock<T: Send>(
        &self,
        work: impl Future<Output = AuditResult<T>> + Send,
    ) -> AuditResult<Option<T>> {
        let holder = self.dedicated("audit-partition lock").await?;
        let holder = &holder;
        let locked: bool = self
            .guarded(move || async move {
                holder
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK_KEY])
                    .await
                    .map(|r| r.get(0))
                    .map_err(|e| pg_error(e, "taking the maintenance lock"))
            })
            .await?;
        if !locked {
            return Ok(None);
        }
        let result = work.await;
        // Closing the connection releases the lock too; unlocking makes it prompt.
        let unlocked = self
            .guarded(move || async move {
                holder
                    .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK_KEY])
                    .await
                    .map_err(|e| pg_error(e, "releasing the maintenance lock"))
            })
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(error = %e, "releasing the maintenance lock failed; it goes with the connection");
        }
        result.map(Some)
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
