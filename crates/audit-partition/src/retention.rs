//! Retention: which partitions have outlived every row's retention, archiving them, keeping their leaf hashes,
//! detaching them concurrently and dropping them, with legal holds and an append-only record of every step.
//!
//! Rules (see also the migration's comments):
//! - A row is kept for the LONGER of its `retention_policy`'s days and the days of the policy its
//!   `data_classification` maps to (`audit_classification_retention`). `standard` and any policy name not in
//!   `audit_retention_policies` use the configured `retention_days`.
//! - A partition expires when its newest possible row (its exclusive upper bound) is older than the longest
//!   retention of the rows it holds (an empty partition: the configured `retention_days`).
//! - A partition holding a row of an organisation or classification under an active legal hold is never dropped.
//! - Order for each expired partition: log `detaching` → `DETACH … CONCURRENTLY` → one transaction on the
//!   detached table, which it locks ACCESS EXCLUSIVE before reading it (nothing can be written into it between
//!   archive and drop): archive (gzip NDJSON + SHA-256 manifest; each line a `StoredEvent` in its JSON form,
//!   counted as it is written), copy `(organization_id, seq, leaf_hash)` into `audit_log_pruned_leaves` (exactly
//!   one leaf per archived row, or nothing is dropped), re-check holds against the organisations and
//!   classifications the archive saw, `DROP TABLE`, log `dropped`. A run that died half-way is finished by the
//!   next run (detach `FINALIZE`, then archive and drop of detached leftovers).
//!   The stages are in `drop.rs`; a real run does all of them on one maintenance session.

use std::collections::BTreeMap;
use std::sync::Arc;

use audit_core::{AuditError, AuditResult, ResiliencePolicy};
use audit_pg::{pg_error, quote_ident};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::archive::{Archive, ArchiveReceipt};
use crate::catalog::{CatalogPartition, Detail, list_partitions};
use crate::db::{On, Session};
use crate::holds::holds_on;
use crate::manager::PartitionManager;

/// The retention rules in force: policy days, the classification floors, and the configured default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionRules {
    /// Configured `retention_days`: used for `standard` and for unknown policy names.
    pub default_days: u32,
    /// `audit_retention_policies` (the `standard` entry is overridden by `default_days`).
    pub policies: BTreeMap<String, u32>,
    /// `audit_classification_retention`: classification → policy name.
    pub classification_policy: BTreeMap<String, String>,
}

impl RetentionRules {
    /// Days a policy keeps rows.
    pub fn policy_days(&self, policy: &str) -> u32 {
        if policy == "standard" {
            return self.default_days;
        }
        self.policies.get(policy).copied().unwrap_or(self.default_days)
    }

    /// Days a row with this policy and classification must be kept: the longer of both rules.
    pub fn row_days(&self, policy: &str, classification: &str) -> u32 {
        let floor = self.classification_policy.get(classification).map(|p| self.policy_days(p)).unwrap_or(0);
        self.policy_days(policy).max(floor)
    }

    /// The shortest retention any row can have: partitions younger than this need no scan.
    pub fn min_days(&self) -> u32 {
        self.policies.keys().map(|p| self.policy_days(p)).chain([self.default_days]).min().unwrap_or(self.default_days)
    }
}

/// What retention did (or, in a dry run, would do) with one expired partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionAction {
    /// Dry run: would be archived and dropped.
    WouldDrop,
    /// Archived, leaf hashes kept, dropped.
    Dropped,
    /// Kept because of a legal hold.
    Held,
    /// Could not be completed this time (see `detail`); the next run retries.
    Failed,
}

/// Where the time of one drop went, seconds (`None` for a step that did not run). Reported so that the cost of
/// the drop itself (detach + drop) can be told apart from the archive and from keeping the leaf hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DropTimings {
    /// `DETACH PARTITION … CONCURRENTLY` (and `FINALIZE` when resumed).
    pub detach_s: Option<f64>,
    /// Streaming the (locked) detached table's rows to the gzip NDJSON archive, stored with its manifest.
    pub archive_s: Option<f64>,
    /// The drop itself, at the end of the retention transaction: hold re-check (against what the archive saw),
    /// `DROP TABLE`, the `dropped` record, COMMIT. Reads no row of the table.
    pub drop_transaction_s: Option<f64>,
    /// Copying the leaf hashes into audit_log_pruned_leaves (what integrity needs of dropped rows), which also
    /// checks that there is one per archived row; before the drop, in the same transaction.
    pub keep_leaves_s: Option<f64>,
}

/// One expired partition in a retention report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionItem {
    /// Partition name.
    pub partition: String,
    /// Inclusive lower bound.
    pub range_from: DateTime<Utc>,
    /// Exclusive upper bound (newest possible row).
    pub range_to: DateTime<Utc>,
    /// Rows counted when planning (exact for dropped partitions: the archived count).
    pub rows: i64,
    /// Longest retention among the partition's rows, days.
    pub retention_days: u32,
    /// When the partition became droppable: `range_to + retention_days`.
    pub expired_at: DateTime<Utc>,
    /// What happened.
    pub action: RetentionAction,
    /// Ids of the active legal holds that keep it.
    pub holds: Vec<i64>,
    /// Where its events were archived.
    pub archive: Option<ArchiveReceipt>,
    /// Extra information (errors, resumed runs).
    pub detail: Option<String>,
    /// Time of each step of a real drop.
    pub timings: DropTimings,
}

/// The result of one retention run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionReport {
    /// Id of the run, as recorded in `audit_retention_log`.
    pub run_id: Uuid,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The "now" retention was evaluated against.
    pub evaluated_at: DateTime<Utc>,
    /// The rules used.
    pub rules: RetentionRules,
    /// Partitions not yet expired.
    pub kept: usize,
    /// Expired partitions and what happened to each.
    pub items: Vec<RetentionItem>,
    /// Remarks (e.g. no archive configured).
    pub notes: Vec<String>,
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Runs retention. With `dry_run` it only plans (reads, never writes). Otherwise it needs an archive
    /// (`archive_dir` or [`Self::with_archive`]) and the maintenance advisory lock; if another instance holds
    /// the lock it fails with a transient error.
    pub async fn retention(&self, dry_run: bool) -> AuditResult<RetentionReport> {
        let now = Utc::now();
        if dry_run {
            return self.plan_report(On::Pool, now).await;
        }
        self.require_archive()?;
        self.with_maintenance_lock(self.run_retention(now))
            .await?
            .ok_or_else(|| AuditError::transient("retention: another instance holds the partition maintenance lock"))
    }

    /// The archive, or why retention cannot drop anything without one.
    pub(crate) fn require_archive(&self) -> AuditResult<&Arc<dyn Archive>> {
        self.archive.as_ref().ok_or_else(|| {
            AuditError::invalid(
                "retention needs an archive: set partition.archiveDir (AUDIT_DB_ARCHIVE_DIR); partitions are never \
                 dropped without one",
            )
        })
    }

    /// Reads the retention rules.
    pub(crate) async fn load_rules(&self, on: On<'_>) -> AuditResult<RetentionRules> {
        let (policies, classes) = self
            .run(on, |c| async move {
                let policies = c
                    .query("SELECT policy_name::text, retention_days FROM audit_retention_policies", &[])
                    .await
                    .map_err(|e| pg_error(e, "reading retention policies"))?;
                let classes = c
                    .query(
                        "SELECT data_classification::text, policy_name::text FROM audit_classification_retention",
                        &[],
                    )
                    .await
                    .map_err(|e| pg_error(e, "reading classification retention"))?;
                Ok((policies, classes))
            })
            .await?;
        Ok(RetentionRules {
            default_days: self.config.retention_days,
            policies: policies
                .iter()
                .map(|r| (r.get::<_, String>(0), u32::try_from(r.get::<_, i32>(1)).unwrap_or(u32::MAX)))
                .collect(),
            classification_policy: classes.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect(),
        })
    }

    /// The dry-run report: expired partitions with `WouldDrop` or `Held`.
    pub(crate) async fn plan_report(&self, on: On<'_>, now: DateTime<Utc>) -> AuditResult<RetentionReport> {
        let rules = self.load_rules(on).await?;
        let (items, kept) = self.plan(on, &rules, now).await?;
        let mut notes = Vec::new();
        if self.archive.is_none() {
            notes.push("no archive configured (partition.archiveDir): expired partitions are not dropped".into());
        }
        Ok(RetentionReport { run_id: Uuid::new_v4(), dry_run: true, evaluated_at: now, rules, kept, items, notes })
    }

    /// Expired partitions (with their holds) and how many partitions are kept.
    async fn plan(
        &self,
        on: On<'_>,
        rules: &RetentionRules,
        now: DateTime<Utc>,
    ) -> AuditResult<(Vec<RetentionItem>, usize)> {
        let parts = self.run(on, |c| async move { list_partitions(&*c, Detail::Bounds).await }).await?;
        let mut items = Vec::new();
        let mut kept = 0;
        for p in parts.into_iter().filter(|p| p.range_from.is_some() && p.range_to.is_some()) {
            match self.assess(on, p, rules, now).await? {
                Some(item) => items.push(item),
                None => kept += 1,
            }
        }
        Ok((items, kept))
    }

    /// The retention item of a bounded partition if it has expired, `None` if it is kept.
    async fn assess(
        &self,
        on: On<'_>,
        p: CatalogPartition,
        rules: &RetentionRules,
        now: DateTime<Utc>,
    ) -> AuditResult<Option<RetentionItem>> {
        let (Some(from), Some(to)) = (p.range_from, p.range_to) else { return Ok(None) };
        if p.detach_pending || to + days(rules.min_days()) > now {
            return Ok(None);
        }
        let name = p.name.as_str();
        let classes = self.run(on, |c| async move { retention_classes(&*c, name).await }).await?;
        let rows: i64 = classes.iter().map(|(_, _, n)| n).sum();
        let retention_days =
            classes.iter().map(|(policy, class, _)| rules.row_days(policy, class)).max().unwrap_or(rules.default_days);
        let expired_at = to + days(retention_days);
        if expired_at > now {
            return Ok(None);
        }
        let holds = self.run(on, |c| async move { holds_on(&*c, name).await }).await?;
        Ok(Some(RetentionItem {
            partition: p.name,
            range_from: from,
            range_to: to,
            rows,
            retention_days,
            expired_at,
            action: if holds.is_empty() { RetentionAction::WouldDrop } else { RetentionAction::Held },
            holds,
            archive: None,
            detail: None,
            timings: DropTimings::default(),
        }))
    }

    /// A real run on a maintenance session of its own; the caller holds the maintenance lock.
    pub(crate) async fn run_retention(&self, now: DateTime<Utc>) -> AuditResult<RetentionReport> {
        let session = self.open_session().await?;
        let on = On::Session(&session);
        let run_id = Uuid::new_v4();
        let mut items = self.resume_leftovers(&session, run_id).await?;
        let rules = self.load_rules(on).await?;
        let (planned, kept) = self.plan(on, &rules, now).await?;
        for item in planned {
            items.push(self.apply(&session, run_id, item).await?);
        }
        let dropped = items.iter().filter(|i| i.action == RetentionAction::Dropped).count();
        tracing::info!(%run_id, dropped, kept, "retention run finished");
        Ok(RetentionReport { run_id, dry_run: false, evaluated_at: now, rules, kept, items, notes: Vec::new() })
    }

    /// Logs a held partition, or drops an expired one (a failure is reported in the item; the next run retries).
    async fn apply(&self, session: &Session, run_id: Uuid, mut item: RetentionItem) -> AuditResult<RetentionItem> {
        if item.action == RetentionAction::Held {
            let detail = format!("legal holds {:?}", item.holds);
            self.log(On::Session(session), run_id, "held", &item, Some(&detail)).await?;
            metrics::counter!(audit_core::metrics::RETENTION_ACTIONS, "action" => "held").increment(1);
        } else if let Err(e) = self.drop_one(session, run_id, &mut item).await {
            tracing::warn!(partition = %item.partition, error = %e, "retention could not drop partition");
            metrics::counter!(audit_core::metrics::RETENTION_ACTIONS, "action" => "failed").increment(1);
            item.action = RetentionAction::Failed;
            item.detail = Some(e.to_string());
        }
        Ok(item)
    }

    /// Appends one record to `audit_retention_log`.
    pub(crate) async fn log(
        &self,
        on: On<'_>,
        run_id: Uuid,
        action: &str,
        item: &RetentionItem,
        detail: Option<&str>,
    ) -> AuditResult<()> {
        let actor = self.actor.as_str();
        self.run(on, |c| async move { insert_log(&*c, actor, run_id, action, item, detail).await }).await
    }
}

/// `(retention_policy, data_classification, rows)` of a partition's rows.
async fn retention_classes<C: GenericClient + Sync>(
    client: &C,
    table: &str,
) -> AuditResult<Vec<(String, String, i64)>> {
    let sql = format!(
        "SELECT retention_policy::text, data_classification::text, count(*) FROM {} GROUP BY 1, 2",
        quote_ident(table)
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| pg_error(e, &format!("reading retention classes of {table}")))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Appends one record to `audit_retention_log` (on a connection or inside the drop transaction), stamped with the
/// time of writing (`clock_timestamp()`: the drop's transaction began before its archive).
pub(crate) async fn insert_log<C: GenericClient + Sync>(
    client: &C,
    actor: &str,
    run_id: Uuid,
    action: &str,
    item: &RetentionItem,
    detail: Option<&str>,
) -> AuditResult<()> {
    let days = i32::try_from(item.retention_days).unwrap_or(i32::MAX);
    let receipt = item.archive.as_ref();
    client
        .execute(
            "INSERT INTO audit_retention_log (run_id, action, partition_name, range_from, range_to, \
             retention_days, row_count, archive_path, manifest_path, archive_sha256, detail, recorded_by, \
             recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, clock_timestamp())",
            &[
                &run_id,
                &action,
                &item.partition,
                &item.range_from,
                &item.range_to,
                &days,
                &item.rows,
                &receipt.map(|r| r.location.as_str()),
                &receipt.map(|r| r.manifest_location.as_str()),
                &receipt.map(|r| r.sha256.as_str()),
                &detail,
                &actor,
            ],
        )
        .await
        .map_err(|e| pg_error(e, &format!("writing the retention log ({action} {})", item.partition)))?;
    Ok(())
}

/// `n` days as a duration.
pub(crate) fn days(n: u32) -> TimeDelta {
    TimeDelta::days(i64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(default_days: u32) -> RetentionRules {
        RetentionRules {
            default_days,
            policies: [("standard", 2555), ("phi_extended", 2555), ("minimal", 90), ("confidential", 1825)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            classification_policy: [
                ("PUBLIC", "minimal"),
                ("INTERNAL", "minimal"),
                ("CONFIDENTIAL", "confidential"),
                ("PHI", "phi_extended"),
                ("FINANCIAL", "standard"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }
    }

    #[test]
    fn a_row_keeps_the_longer_of_its_policy_and_its_classification_floor() {
        let r = rules(365);
        assert_eq!(r.policy_days("standard"), 365, "configured retention_days overrides `standard`");
        assert_eq!(r.policy_days("healthcare_7_years"), 365, "unknown policies use the configured default");
        assert_eq!(r.row_days("minimal", "INTERNAL"), 90);
        assert_eq!(r.row_days("minimal", "PHI"), 2555);
        assert_eq!(r.row_days("minimal", "CONFIDENTIAL"), 1825);
        assert_eq!(r.row_days("standard", "FINANCIAL"), 365);
        assert_eq!(r.row_days("phi_extended", "PUBLIC"), 2555);
        assert_eq!(r.min_days(), 90);
        assert_eq!(rules(30).min_days(), 30);
    }
}
