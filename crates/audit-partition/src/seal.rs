//! Sealing: a partition whose period is over (no longer written) gets the indexes that are too expensive to keep up
//! row by row, and is frozen.
//!
//! Why: the GIN index on `details` roughly doubled the CPU and WAL of every insert (≈ 1 KB of WAL per event, see
//! docs/benchmarks.md). Built once after the period ends it costs about the same CPU in total, but off the write
//! path, and its result is compact. A sealed leaf is then `VACUUM (FREEZE, ANALYZE)`d: its pages never need another
//! anti-wraparound pass, its visibility map lets index-only scans skip the heap, and the planner knows its contents.
//!
//! Every step is idempotent (`CREATE INDEX CONCURRENTLY IF NOT EXISTS`, an invalid leftover of an interrupted build
//! is dropped first), never blocks writers (CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on the leaf only) and waits
//! for locks only up to `lock_timeout`, retried like all partition DDL. A late event for a sealed period is still
//! accepted: the leaf's own indexes are maintained for it like any index.

use std::time::{Duration, Instant};

use audit_core::{AuditResult, ResiliencePolicy};
use audit_pg::{pg_error, quote_ident};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{Detail, list_partitions};
use crate::db::{On, Session, retry_lock_timeouts};
use crate::manager::PartitionManager;

/// How long after a period's end its partition is sealed: late events (clock skew, retried batches) of the
/// period mostly arrive within it, and the partition written until then keeps its cheap index set.
pub const SEAL_GRACE: Duration = Duration::from_secs(3600);

/// An index built on each leaf when its partition is sealed (and not maintained on the partition being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedIndex {
    /// Suffix of the per-leaf index name (`<leaf>_<suffix>`).
    pub suffix: &'static str,
    /// What follows `ON <leaf>` in `CREATE INDEX`.
    pub definition: &'static str,
}

/// The indexes sealing builds. `details` containment (`@>`) with the jsonb_path_ops operator class: smaller and
/// faster than the default class, and supports exactly the operator the read path uses.
pub const SEALED_INDEXES: &[SealedIndex] =
    &[SealedIndex { suffix: "details_gin", definition: "USING gin (details jsonb_path_ops)" }];

/// What sealing one partition did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SealReport {
    /// The partition (a child of `audit_log`).
    pub partition: String,
    /// Its leaf tables (the partition itself, or its hash/list sub-partitions).
    pub leaves: Vec<String>,
    /// Indexes in place on the leaves afterwards (built now or found valid).
    pub indexes: Vec<String>,
    /// Rows in the leaves (exact count taken while sealing).
    pub rows: i64,
    /// Wall time of the whole seal.
    pub seconds: f64,
}

/// The per-leaf index name: `<leaf>_<suffix>`, cut to PostgreSQL's 63-byte identifier limit.
pub(crate) fn sealed_index_name(leaf: &str, suffix: &str) -> String {
    let mut name = format!("{leaf}_{suffix}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

impl<R: ResiliencePolicy> PartitionManager<R> {
    /// Partitions of `audit_log` whose period ended at least [`SEAL_GRACE`] before `now` and that are not recorded
    /// as sealed, oldest first.
    pub async fn unsealed_due(&self, now: DateTime<Utc>) -> AuditResult<Vec<String>> {
        let cutoff = now - chrono::Duration::from_std(SEAL_GRACE).unwrap_or_else(|_| chrono::Duration::hours(1));
        let parts = self.run(On::Pool, |c| async move { list_partitions(&*c, Detail::Bounds).await }).await?;
        let sealed: Vec<String> = self
            .run(On::Pool, |c| async move {
                c.query("SELECT partition_name FROM audit_partition_seals", &[])
                    .await
                    .map_err(|e| pg_error(e, "reading sealed partitions"))
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        Ok(parts
            .into_iter()
            .filter(|p| !p.detach_pending && p.range_to.is_some_and(|to| to <= cutoff))
            .filter(|p| !sealed.contains(&p.name))
            .map(|p| p.name)
            .collect())
    }

    /// Seals every partition [`Self::unsealed_due`] names (one at a time, on one dedicated session). Called by
    /// maintenance and after migrations.
    pub async fn seal_due(&self, now: DateTime<Utc>) -> AuditResult<Vec<SealReport>> {
        let due = self.unsealed_due(now).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let session = self.open_session().await?;
        let mut out = Vec::with_capacity(due.len());
        for name in due {
            out.push(self.seal_on(&session, &name).await?);
        }
        Ok(out)
    }

    /// Seals the partition `name` now (whether or not its period is over): builds [`SEALED_INDEXES`] on each leaf
    /// concurrently, `VACUUM (FREEZE, ANALYZE)`s each leaf, and records it in `audit_partition_seals`.
    pub async fn seal(&self, name: &str) -> AuditResult<SealReport> {
        let session = self.open_session().await?;
        self.seal_on(&session, name).await
    }

    async fn seal_on(&self, session: &Session, name: &str) -> AuditResult<SealReport> {
        let started = Instant::now();
        let on = On::Session(session);
        let what = format!("sealing {name}");
        let what = what.as_str();
        let leaves: Vec<String> = self
            .run(on, |c| async move {
                c.query(
                    "SELECT c.relname::text FROM pg_partition_tree(to_regclass(quote_ident($1))) t \
                     JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY 1",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error(e, what))
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        if leaves.is_empty() {
            return Err(audit_core::AuditError::not_found(format!("partition: `{name}` is not a table of audit_log")));
        }
        let mut indexes = Vec::new();
        let mut rows = 0i64;
        for leaf in &leaves {
            for ix in SEALED_INDEXES {
                let index = sealed_index_name(leaf, ix.suffix);
                self.build_concurrently(session, leaf, &index, ix.definition).await?;
                indexes.push(index);
            }
            let vacuum = format!("VACUUM (FREEZE, ANALYZE) {}", quote_ident(leaf));
            let count = format!("SELECT count(*) FROM {}", quote_ident(leaf));
            let (vacuum, count) = (vacuum.as_str(), count.as_str());
            rows += self
                .run(on, |c| async move {
                    c.batch_execute(vacuum).await.map_err(|e| pg_error(e, what))?;
                    c.query_one(count, &[]).await.map(|r| r.get::<_, i64>(0)).map_err(|e| pg_error(e, what))
                })
                .await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let (actor, idx) = (self.actor.as_str(), &indexes);
        self.run(on, |c| async move {
            c.execute(
                "INSERT INTO audit_partition_seals (partition_name, row_count, seconds, indexes, sealed_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (partition_name) DO UPDATE SET sealed_at = now(), \
                 row_count = EXCLUDED.row_count, seconds = EXCLUDED.seconds, indexes = EXCLUDED.indexes, \
                 sealed_by = EXCLUDED.sealed_by",
                &[&name, &rows, &seconds, idx, &actor],
            )
            .await
            .map_err(|e| pg_error(e, what))
        })
        .await?;
        tracing::info!(partition = %name, rows, seconds, "sealed partition");
        Ok(SealReport { partition: name.to_string(), leaves, indexes, rows, seconds })
    }

    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS index ON leaf <definition>`, after dropping an invalid leftover of
    /// the same name (an interrupted concurrent build leaves one behind, and IF NOT EXISTS would keep it).
    async fn build_concurrently(
        &self,
        session: &Session,
        leaf: &str,
        index: &str,
        definition: &str,
    ) -> AuditResult<()> {
        let what = format!("building {index} on {leaf}");
        let create = format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {definition}",
            quote_ident(index),
            quote_ident(leaf)
        );
        let drop_invalid = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(index));
        let (what, create, drop_invalid) = (what.as_str(), create.as_str(), drop_invalid.as_str());
        let schedule = &self.ddl_retry;
        self.run(On::Session(session), |c| async move {
            retry_lock_timeouts(schedule, what, &*c, |c: &Client| async move {
                let r = async {
                    let invalid: bool = c
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid \
                             WHERE x.relname = $1 AND NOT i.indisvalid)",
                            &[&index],
                        )
                        .await
                        .map_err(|e| pg_error(e, what))?
                        .get(0);
                    if invalid {
                        tracing::info!(index, "dropping an invalid index left by an interrupted build");
                        c.batch_execute(drop_invalid).await.map_err(|e| pg_error(e, what))?;
                    }
                    c.batch_execute(create).await.map_err(|e| pg_error(e, what))
                }
                .await;
                (c, r)
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_fit_postgres_identifiers() {
        assert_eq!(sealed_index_name("audit_log_2026_11", "details_gin"), "audit_log_2026_11_details_gin");
        let long = "x".repeat(70);
        assert_eq!(sealed_index_name(&long, "details_gin").len(), 63);
    }
}
