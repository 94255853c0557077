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
//! - Order for each expired partition: log `detaching` → `DETACH … CONCURRENTLY` → archive (gzip NDJSON +
//!   SHA-256 manifest) → one transaction: check the row count against the archive, re-check holds, copy
//!   `(organization_id, seq, leaf_hash)` into `audit_log_pruned_leaves`, `DROP TABLE`, log `dropped`. A run that
//!   died half-way is finished by the next run (detach `FINALIZE`, then archive and drop of detached leftovers).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use audit_core::{AuditError, AuditResult};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel};
use uuid::Uuid;

use crate::archive::{Archive, ArchiveManifest, ArchiveReceipt, StagedWriter};
use crate::db::{self, ident, pg_err, retry_lock};
use crate::manager::{PartitionManager, list_partitions, run_in_transaction};
use crate::period::{PARENT_TABLE, Period, ts_literal};

/// Rows fetched per round trip while archiving.
const ARCHIVE_BATCH: i32 = 5_000;

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

enum DropOutcome {
    Dropped,
    Held(Vec<i64>),
    CountMismatch(i64),
}

impl PartitionManager {
    /// Runs retention. With `dry_run` it only plans (reads, never writes). Otherwise it needs an archive
    /// (`archive_dir` or [`Self::with_archive`]) and the maintenance advisory lock; if another instance holds
    /// the lock it fails with a transient error.
    pub async fn retention(&self, dry_run: bool) -> AuditResult<RetentionReport> {
        let now = Utc::now();
        if dry_run {
            let client = self.client().await?;
            return self.plan_report(&client, now).await;
        }
        let archive = self.require_archive()?;
        let lock = db::connect(&self.url, "audit-partition-lock").await?;
        if !try_lock(&lock).await? {
            return Err(AuditError::new(
                audit_core::ErrorClass::Transient,
                "retention: another instance holds the partition maintenance lock",
            ));
        }
        let mut work = db::connect(&self.url, "audit-partition-maintenance").await?;
        let res = self.run_retention(&mut work, archive, now).await;
        unlock(&lock).await;
        res
    }

    pub(crate) fn require_archive(&self) -> AuditResult<Arc<dyn Archive>> {
        self.archive.clone().ok_or_else(|| {
            AuditError::invalid(
                "retention needs an archive: set partition.archiveDir (AUDIT_DB_ARCHIVE_DIR); partitions are never \
                 dropped without one",
            )
        })
    }

    /// Reads the retention rules.
    pub(crate) async fn load_rules(&self, client: &Client) -> AuditResult<RetentionRules> {
        let policies = client
            .query("SELECT policy_name::text, retention_days FROM audit_retention_policies", &[])
            .await
            .map_err(|e| pg_err(e, "reading retention policies"))?
            .iter()
            .map(|r| (r.get::<_, String>(0), u32::try_from(r.get::<_, i32>(1)).unwrap_or(u32::MAX)))
            .collect();
        let classification_policy = client
            .query("SELECT data_classification::text, policy_name::text FROM audit_classification_retention", &[])
            .await
            .map_err(|e| pg_err(e, "reading classification retention"))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        Ok(RetentionRules { default_days: self.config.retention_days, policies, classification_policy })
    }

    /// The dry-run report: expired partitions with `WouldDrop` or `Held`.
    pub(crate) async fn plan_report(&self, client: &Client, now: DateTime<Utc>) -> AuditResult<RetentionReport> {
        let rules = self.load_rules(client).await?;
        let (items, kept) = self.plan(client, &rules, now).await?;
        let mut notes = Vec::new();
        if self.archive.is_none() {
            notes.push("no archive configured (partition.archiveDir): expired partitions are not dropped".into());
        }
        Ok(RetentionReport { run_id: Uuid::new_v4(), dry_run: true, evaluated_at: now, rules, kept, items, notes })
    }

    async fn plan(
        &self,
        client: &Client,
        rules: &RetentionRules,
        now: DateTime<Utc>,
    ) -> AuditResult<(Vec<RetentionItem>, usize)> {
        let mut items = Vec::new();
        let mut kept = 0;
        for p in list_partitions(client).await? {
            let (Some(from), Some(to)) = (p.range_from, p.range_to) else { continue };
            if p.detach_pending || to + days(rules.min_days()) > now {
                kept += 1;
                continue;
            }
            let t = ident(&p.name);
            let rows = client
                .query(
                    &format!(
                        "SELECT retention_policy::text, data_classification::text, count(*) FROM {t} GROUP BY 1, 2"
                    ),
                    &[],
                )
                .await
                .map_err(|e| pg_err(e, &format!("reading retention classes of {}", p.name)))?;
            let count: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
            let retention_days = rows
                .iter()
                .map(|r| rules.row_days(r.get::<_, &str>(0), r.get::<_, &str>(1)))
                .max()
                .unwrap_or(rules.default_days);
            let expired_at = to + days(retention_days);
            if expired_at > now {
                kept += 1;
                continue;
            }
            let holds = holds_on(client, &p.name).await?;
            items.push(RetentionItem {
                partition: p.name,
                range_from: from,
                range_to: to,
                rows: count,
                retention_days,
                expired_at,
                action: if holds.is_empty() { RetentionAction::WouldDrop } else { RetentionAction::Held },
                holds,
                archive: None,
                detail: None,
            });
        }
        Ok((items, kept))
    }

    /// A real run; the caller holds the maintenance lock.
    pub(crate) async fn run_retention(
        &self,
        work: &mut Client,
        archive: Arc<dyn Archive>,
        now: DateTime<Utc>,
    ) -> AuditResult<RetentionReport> {
        let run_id = Uuid::new_v4();
        work.batch_execute(&self.set_lock_timeout()).await.map_err(|e| pg_err(e, "setting lock_timeout"))?;
        let mut items = self.resume_leftovers(work, &archive, run_id).await?;
        let rules = self.load_rules(work).await?;
        let (planned, kept) = self.plan(work, &rules, now).await?;
        for mut item in planned {
            if item.action == RetentionAction::Held {
                self.log(work, run_id, "held", &item, Some(&format!("legal holds {:?}", item.holds))).await?;
            } else if let Err(e) = self.drop_one(work, &archive, run_id, &mut item).await {
                tracing::warn!(partition = %item.partition, error = %e, "retention could not drop partition");
                item.action = RetentionAction::Failed;
                item.detail = Some(e.to_string());
            }
            items.push(item);
        }
        let dropped = items.iter().filter(|i| i.action == RetentionAction::Dropped).count();
        tracing::info!(%run_id, dropped, kept, "retention run finished");
        Ok(RetentionReport { run_id, dry_run: false, evaluated_at: now, rules, kept, items, notes: Vec::new() })
    }

    async fn log(
        &self,
        client: &Client,
        run_id: Uuid,
        action: &str,
        item: &RetentionItem,
        detail: Option<&str>,
    ) -> AuditResult<()> {
        let days = i32::try_from(item.retention_days).unwrap_or(i32::MAX);
        let (path, manifest, sha) = match &item.archive {
            Some(r) => (Some(r.location.as_str()), Some(r.manifest_location.as_str()), Some(r.sha256.as_str())),
            None => (None, None, None),
        };
        client
            .execute(
                "INSERT INTO audit_retention_log (run_id, action, partition_name, range_from, range_to, \
                 retention_days, row_count, archive_path, manifest_path, archive_sha256, detail, recorded_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &run_id,
                    &action,
                    &item.partition,
                    &item.range_from,
                    &item.range_to,
                    &days,
                    &item.rows,
                    &path,
                    &manifest,
                    &sha,
                    &detail,
                    &self.actor,
                ],
            )
            .await
            .map_err(|e| pg_err(e, "writing the retention log"))?;
        Ok(())
    }

    /// Detaches, archives and drops one expired partition.
    async fn drop_one(
        &self,
        work: &mut Client,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
    ) -> AuditResult<()> {
        self.log(work, run_id, "detaching", item, None).await?;
        let name = item.partition.clone();
        let detach = format!("ALTER TABLE {PARENT_TABLE} DETACH PARTITION {} CONCURRENTLY", ident(&name));
        let res = retry_lock!(&name, work.batch_execute(&detach).await);
        if let Err(e) = res {
            // An interrupted concurrent detach leaves the partition "detach pending": complete it.
            let pending = list_partitions(work).await?.iter().any(|p| p.name == name && p.detach_pending);
            if !pending {
                return Err(pg_err(e, &format!("detaching {name}")));
            }
            self.finalize_detach(work, &name).await?;
        }
        self.forget(Period::from_bounds(self.config.interval, item.range_from, item.range_to));
        tracing::info!(partition = %name, "detached partition");
        self.finish_drop(work, archive, run_id, item).await
    }

    async fn finalize_detach(&self, work: &Client, name: &str) -> AuditResult<()> {
        let sql = format!("ALTER TABLE {PARENT_TABLE} DETACH PARTITION {} FINALIZE", ident(name));
        retry_lock!(name, work.batch_execute(&sql).await)
            .map_err(|e| pg_err(e, &format!("finalizing detach of {name}")))
    }

    /// Archive → (count check, hold re-check, keep leaves, drop, log) for a detached table.
    async fn finish_drop(
        &self,
        work: &mut Client,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
    ) -> AuditResult<()> {
        let receipt = self.archive_table(work, archive, run_id, item).await?;
        item.archive = Some(receipt);
        let outcome = retry_lock!(&item.partition, self.try_drop_tx(work, run_id, item).await)
            .map_err(|e| pg_err(e, &format!("dropping {}", item.partition)))?;
        match outcome {
            DropOutcome::Dropped => {
                item.action = RetentionAction::Dropped;
                metrics::counter!("audit_partition_dropped_total").increment(1);
                tracing::info!(partition = %item.partition, rows = item.rows, "archived and dropped partition");
                Ok(())
            }
            DropOutcome::Held(holds) => {
                item.action = RetentionAction::Held;
                item.holds = holds;
                let attach = format!(
                    "{};\nALTER TABLE {PARENT_TABLE} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({});",
                    self.set_local_lock_timeout(),
                    ident(&item.partition),
                    ts_literal(item.range_from),
                    ts_literal(item.range_to)
                );
                let res = retry_lock!(&item.partition, run_in_transaction(work, &attach).await);
                if let Err(e) = res {
                    item.detail = Some(format!("held after detaching; re-attach failed (next run retries): {e}"));
                }
                self.log(work, run_id, "held", item, Some("legal hold placed during the run; re-attached")).await
            }
            DropOutcome::CountMismatch(n) => Err(AuditError::integrity(format!(
                "{} holds {n} rows but {} were archived; not dropped",
                item.partition, item.rows
            ))),
        }
    }

    async fn try_drop_tx(
        &self,
        work: &mut Client,
        run_id: Uuid,
        item: &RetentionItem,
    ) -> Result<DropOutcome, tokio_postgres::Error> {
        let t = ident(&item.partition);
        let tx = work.transaction().await?;
        tx.batch_execute(&format!("{}; LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE", self.set_local_lock_timeout()))
            .await?;
        let n: i64 = tx.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await?.get(0);
        if n != item.rows {
            return Ok(DropOutcome::CountMismatch(n));
        }
        let holds: Vec<i64> = tx.query(&holds_sql(&item.partition), &[]).await?.iter().map(|r| r.get(0)).collect();
        if !holds.is_empty() {
            return Ok(DropOutcome::Held(holds));
        }
        tx.execute(
            &format!(
                "INSERT INTO audit_log_pruned_leaves (organization_id, seq, leaf_hash, \"timestamp\", partition_name) \
                 SELECT organization_id, seq, leaf_hash, \"timestamp\", $1 FROM {t} ON CONFLICT DO NOTHING"
            ),
            &[&item.partition],
        )
        .await?;
        tx.batch_execute(&format!("DROP TABLE {t}")).await?;
        let receipt = item.archive.as_ref();
        let days = i32::try_from(item.retention_days).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO audit_retention_log (run_id, action, partition_name, range_from, range_to, retention_days, \
             row_count, archive_path, manifest_path, archive_sha256, detail, recorded_by) \
             VALUES ($1, 'dropped', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &run_id,
                &item.partition,
                &item.range_from,
                &item.range_to,
                &days,
                &item.rows,
                &receipt.map(|r| r.location.as_str()),
                &receipt.map(|r| r.manifest_location.as_str()),
                &receipt.map(|r| r.sha256.as_str()),
                &item.detail,
                &self.actor,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(DropOutcome::Dropped)
    }

    /// Streams a (detached) table's rows into a staged gzip NDJSON file, then stores it in the archive.
    async fn archive_table(
        &self,
        work: &mut Client,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
        item: &mut RetentionItem,
    ) -> AuditResult<ArchiveReceipt> {
        let file_name = format!("{}-{run_id}.ndjson.gz", item.partition);
        let staged: PathBuf = archive.staging_dir().join(format!("{file_name}.part"));
        let ctx = format!("archiving {}", item.partition);
        let mut writer = Some(StagedWriter::create(staged)?);
        {
            let tx = work
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| pg_err(e, &ctx))?;
            let stmt = tx
                .prepare(&format!("SELECT to_jsonb(t)::text FROM {} t", ident(&item.partition)))
                .await
                .map_err(|e| pg_err(e, &ctx))?;
            let portal = tx.bind(&stmt, &[]).await.map_err(|e| pg_err(e, &ctx))?;
            loop {
                let rows = tx.query_portal(&portal, ARCHIVE_BATCH).await.map_err(|e| pg_err(e, &ctx))?;
                if rows.is_empty() {
                    break;
                }
                let lines: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                let mut w = writer.take().expect("writer is put back after every batch");
                w = tokio::task::spawn_blocking(move || w.write_lines(&lines).map(|()| w))
                    .await
                    .map_err(|e| AuditError::permanent(format!("{ctx}: writer task failed: {e}")))??;
                writer = Some(w);
            }
            tx.commit().await.map_err(|e| pg_err(e, &ctx))?;
        }
        let w = writer.take().expect("writer is present after the loop");
        let (path, rows, sha256, bytes) = tokio::task::spawn_blocking(move || w.finish())
            .await
            .map_err(|e| AuditError::permanent(format!("{ctx}: writer task failed: {e}")))??;
        item.rows = i64::try_from(rows).unwrap_or(i64::MAX);
        let manifest = ArchiveManifest {
            format: "ndjson+gzip".into(),
            partition: item.partition.clone(),
            range_from: item.range_from,
            range_to: item.range_to,
            rows,
            sha256,
            bytes,
            file_name,
            run_id,
            created_at: Utc::now(),
        };
        archive.store(&path, &manifest).await
    }

    /// Finishes partitions a previous run left half-done: completes pending detaches, then archives and drops
    /// detached tables whose `detaching` record has no `dropped` record after it.
    async fn resume_leftovers(
        &self,
        work: &mut Client,
        archive: &Arc<dyn Archive>,
        run_id: Uuid,
    ) -> AuditResult<Vec<RetentionItem>> {
        for p in list_partitions(work).await?.into_iter().filter(|p| p.detach_pending) {
            tracing::info!(partition = %p.name, "finalizing an interrupted concurrent detach");
            self.finalize_detach(work, &p.name).await?;
        }
        let rows = work
            .query(
                "SELECT DISTINCT ON (l.partition_name) l.run_id, l.partition_name, l.range_from, l.range_to, \
                        coalesce(l.retention_days, 0), coalesce(l.row_count, 0) \
                 FROM audit_retention_log l \
                 JOIN pg_class c ON c.oid = to_regclass(quote_ident(l.partition_name)) \
                 WHERE l.action = 'detaching' AND NOT c.relispartition \
                   AND NOT EXISTS (SELECT 1 FROM audit_retention_log d WHERE d.action = 'dropped' \
                                   AND d.partition_name = l.partition_name AND d.id > l.id) \
                 ORDER BY l.partition_name, l.id DESC",
                &[],
            )
            .await
            .map_err(|e| pg_err(e, "finding interrupted retention runs"))?;
        let mut items = Vec::new();
        for r in rows {
            let old_run: Uuid = r.get(0);
            let (range_from, range_to): (DateTime<Utc>, DateTime<Utc>) = (r.get(2), r.get(3));
            let retention_days = u32::try_from(r.get::<_, i32>(4)).unwrap_or(0);
            let mut item = RetentionItem {
                partition: r.get(1),
                range_from,
                range_to,
                rows: r.get(5),
                retention_days,
                expired_at: range_to + days(retention_days),
                action: RetentionAction::Failed,
                holds: Vec::new(),
                archive: None,
                detail: Some(format!("resumed from run {old_run}")),
            };
            tracing::info!(partition = %item.partition, %old_run, "resuming an interrupted retention drop");
            if let Err(e) = self.finish_drop(work, archive, run_id, &mut item).await {
                item.action = RetentionAction::Failed;
                item.detail = Some(format!("resumed from run {old_run}: {e}"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

fn days(n: u32) -> TimeDelta {
    TimeDelta::days(i64::from(n))
}

/// Active holds matching a row of `table`.
fn holds_sql(table: &str) -> String {
    let t = ident(table);
    format!(
        "SELECT h.id FROM audit_legal_holds h WHERE h.released_at IS NULL AND ( \
           (h.organization_id IS NOT NULL AND EXISTS (SELECT 1 FROM {t} x WHERE x.organization_id = h.organization_id)) \
           OR (h.data_classification IS NOT NULL \
               AND EXISTS (SELECT 1 FROM {t} x WHERE x.data_classification = h.data_classification))) \
         ORDER BY h.id"
    )
}

async fn holds_on(client: &Client, table: &str) -> AuditResult<Vec<i64>> {
    Ok(client
        .query(&holds_sql(table), &[])
        .await
        .map_err(|e| pg_err(e, &format!("checking legal holds on {table}")))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `pg_try_advisory_lock` on the maintenance key (session level, on a connection used for nothing else).
pub(crate) async fn try_lock(lock: &Client) -> AuditResult<bool> {
    Ok(lock
        .query_one("SELECT pg_try_advisory_lock($1)", &[&crate::manager::MAINTENANCE_LOCK_KEY])
        .await
        .map_err(|e| pg_err(e, "taking the maintenance lock"))?
        .get(0))
}

/// Releases the maintenance lock (closing the connection would too; this makes it prompt).
pub(crate) async fn unlock(lock: &Client) {
    if let Err(e) = lock.execute("SELECT pg_advisory_unlock($1)", &[&crate::manager::MAINTENANCE_LOCK_KEY]).await {
        tracing::warn!(error = %e, "releasing the maintenance lock failed; it goes with the connection");
    }
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
