//! Status and analysis of the partition tree, as serialisable reports for the CLI (json or table).

use audit_core::{AuditResult, ResiliencePolicy};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{CatalogPartition, Detail, list_partitions};
use crate::db::On;
use crate::manager::PartitionManager;
use crate::period::Period;
use crate::retention::RetentionAction;

/// Whether a partition is fully attached or half-way through `DETACH … CONCURRENTLY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionState {
    /// Attached: receives rows, seen by queries.
    Attached,
    /// Detach pending (an interrupted concurrent detach; maintenance finalizes it).
    Detaching,
}

/// One time partition of `audit_log`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// Table name.
    pub name: String,
    /// Inclusive lower bound (`None` for MINVALUE or a bound we cannot read).
    pub range_from: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    pub range_to: Option<DateTime<Utc>>,
    /// The bound as PostgreSQL prints it.
    pub bound: String,
    /// `hash` or `list` when sub-partitioned, else `None`.
    pub sub_partitioning: Option<String>,
    /// Leaf tables under it (1 for a plain partition).
    pub leaves: i64,
    /// Planner estimate summed over leaves (`reltuples`); `None` until a leaf was vacuumed or analysed.
    pub estimated_rows: Option<i64>,
    /// `pg_total_relation_size` summed over the partition's tree, bytes.
    pub total_bytes: i64,
    /// Indexes on the partition itself.
    pub index_count: i64,
    /// Attached or detaching.
    pub state: PartitionState,
}

/// A partition larger than the threshold (consider a shorter interval or the hash strategy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OversizedPartition {
    /// Table name.
    pub name: String,
    /// Its size, bytes.
    pub total_bytes: i64,
}

/// What needs attention in the partition tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionAnalysis {
    /// When the analysis was made.
    pub evaluated_at: DateTime<Utc>,
    /// Recorded strategy.
    pub strategy: String,
    /// Recorded interval.
    pub interval: String,
    /// Number of time partitions.
    pub partitions: usize,
    /// Periods from now through `premake` ahead that have no partition (maintenance creates them).
    pub missing_future: Vec<String>,
    /// Partitions above the size threshold.
    pub oversized: Vec<OversizedPartition>,
    /// Threshold used, bytes.
    pub oversize_threshold_bytes: i64,
    /// Expired partitions retention would drop.
    pub past_retention: Vec<String>,
    /// Expired partitions kept by legal holds, with the hold ids.
    pub held: Vec<(String, Vec<i64>)>,
    /// Partitions stuck half-way through a concurrent detach.
    pub detaching: Vec<String>,
}

impl From<CatalogPartition> for PartitionStatus {
    fn from(p: CatalogPartition) -> Self {
        PartitionStatus {
            sub_partitioning: p.sub_partitioning().map(str::to_string),
            estimated_rows: p.estimated_rows.map(|v| v.round() as i64),
            state: if p.detach_pending { PartitionState::Detaching } else { PartitionState::Attached },
            name: p.name,
            range_from: p.range_from,
            range_to: p.range_to,
            bound: p.bound,
            leaves: p.leaves.unwrap_or(1),
            total_bytes: p.total_bytes.unwrap_or(0),
            index_count: p.index_count,
        }
    }
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Every time partition with bounds, size, estimated rows, index count and state, in name (= time) order.
    pub async fn status(&self) -> AuditResult<Vec<PartitionStatus>> {
        self.status_on(On::Pool).await
    }

    async fn status_on(&self, on: On<'_>) -> AuditResult<Vec<PartitionStatus>> {
        let parts = self.run(on, |c| async move { list_partitions(&*c, Detail::Sizes).await }).await?;
        Ok(parts.into_iter().map(PartitionStatus::from).collect())
    }

    /// Missing future periods, oversized partitions, partitions past retention and held partitions.
    pub async fn analyze(&self) -> AuditResult<PartitionAnalysis> {
        self.analyze_on(On::Pool, Utc::now()).await
    }

    pub(crate) async fn analyze_on(&self, on: On<'_>, now: DateTime<Utc>) -> AuditResult<PartitionAnalysis> {
        let parts = self.status_on(on).await?;
        let interval = self.config.interval;
        let present: std::collections::HashSet<Period> = parts
            .iter()
            .filter(|p| p.state == PartitionState::Attached)
            .filter_map(|p| Period::from_bounds(interval, p.range_from?, p.range_to?))
            .collect();
        let first = Period::of(interval, now);
        let missing_future = (0..=i64::from(self.config.premake))
            .map(|i| first.offset(i))
            .filter(|p| !present.contains(p))
            .map(|p| p.table_name())
            .collect();
        let plan = self.plan_report(on, now).await?;
        Ok(PartitionAnalysis {
            evaluated_at: now,
            strategy: self.config.strategy.as_str().into(),
            interval: interval.as_str().into(),
            partitions: parts.len(),
            missing_future,
            oversized: parts
                .iter()
                .filter(|p| p.total_bytes > self.oversize_bytes)
                .map(|p| OversizedPartition { name: p.name.clone(), total_bytes: p.total_bytes })
                .collect(),
            oversize_threshold_bytes: self.oversize_bytes,
            past_retention: plan
                .items
                .iter()
                .filter(|i| i.action == RetentionAction::WouldDrop)
                .map(|i| i.partition.clone())
                .collect(),
            held: plan
                .items
                .iter()
                .filter(|i| i.action == RetentionAction::Held)
                .map(|i| (i.partition.clone(), i.holds.clone()))
                .collect(),
            detaching: parts.iter().filter(|p| p.state == PartitionState::Detaching).map(|p| p.name.clone()).collect(),
        })
    }
}
