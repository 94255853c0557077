//! Status and analysis of the partition tree, as serialisable reports for the CLI (json or table).

use audit_core::AuditResult;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::db::pg_err;
use crate::manager::{PartitionManager, strategy_name};
use crate::period::{Period, interval_name};
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

impl PartitionManager {
    /// Every time partition with bounds, size, estimated rows, index count and state, in name (= time) order.
    pub async fn status(&self) -> AuditResult<Vec<PartitionStatus>> {
        let client = self.client().await?;
        status_on(&client).await
    }

    /// Missing future periods, oversized partitions, partitions past retention and held partitions.
    pub async fn analyze(&self) -> AuditResult<PartitionAnalysis> {
        let client = self.client().await?;
        self.analyze_on(&client, Utc::now()).await
    }

    pub(crate) async fn analyze_on(&self, client: &Client, now: DateTime<Utc>) -> AuditResult<PartitionAnalysis> {
        let parts = status_on(client).await?;
        let interval = self.config.interval;
        let present: std::collections::HashSet<Period> = parts
            .iter()
            .filter(|p| p.state == PartitionState::Attached)
            .filter_map(|p| Period::from_bounds(interval, p.range_from?, p.range_to?))
            .collect();
        let mut missing_future = Vec::new();
        let mut p = Period::of(interval, now);
        for _ in 0..=self.config.premake {
            if !present.contains(&p) {
                missing_future.push(p.table_name());
            }
            p = p.next();
        }
        let plan = self.plan_report(client, now).await?;
        Ok(PartitionAnalysis {
            evaluated_at: now,
            strategy: strategy_name(self.config.strategy).into(),
            interval: interval_name(interval).into(),
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

async fn status_on(client: &Client) -> AuditResult<Vec<PartitionStatus>> {
    let rows = client
        .query(
            "SELECT c.relname::text, \
                    (regexp_match(b.expr, $$FROM \\('([^']+)'\\)$$))[1]::timestamptz, \
                    (regexp_match(b.expr, $$TO \\('([^']+)'\\)$$))[1]::timestamptz, \
                    b.expr, \
                    CASE pt.partstrat WHEN 'h' THEN 'hash' WHEN 'l' THEN 'list' WHEN 'r' THEN 'range' END, \
                    (SELECT count(*) FROM pg_partition_tree(c.oid) t WHERE t.isleaf), \
                    (SELECT sum(lc.reltuples)::float8 FROM pg_partition_tree(c.oid) t \
                       JOIN pg_class lc ON lc.oid = t.relid WHERE t.isleaf AND lc.reltuples >= 0), \
                    (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint \
                       FROM pg_partition_tree(c.oid) t), \
                    (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid), \
                    i.inhdetachpending \
             FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b \
             LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid \
             WHERE i.inhparent = 'audit_log'::regclass \
             ORDER BY c.relname",
            &[],
        )
        .await
        .map_err(|e| pg_err(e, "reading partition status"))?;
    Ok(rows
        .iter()
        .map(|r| PartitionStatus {
            name: r.get(0),
            range_from: r.get(1),
            range_to: r.get(2),
            bound: r.get(3),
            sub_partitioning: r.get(4),
            leaves: r.get(5),
            estimated_rows: r.get::<_, Option<f64>>(6).map(|v| v.round() as i64),
            total_bytes: r.get(7),
            index_count: r.get(8),
            state: if r.get::<_, bool>(9) { PartitionState::Detaching } else { PartitionState::Attached },
        })
        .collect())
}
