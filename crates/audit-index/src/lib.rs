//! audit-index: the indexes of `audit_log`, a time-partitioned table.
//!
//! [`IndexManager`] implements [`audit_core::IndexAdvisor`]:
//! - **usage** of each parent index summed over its partition indexes (PostgreSQL keeps statistics per partition
//!   index only), with a history of snapshots (`audit_index_usage_snapshots`) so that "unused for N days"
//!   survives a statistics reset or a restart;
//! - **findings**: unused, duplicate, redundant prefix, invalid leftovers, missing on partitions, bloat, write cost;
//! - **recommendations** from the real workload (pg_stat_statements), costed with HypoPG hypothetical indexes on
//!   every partition when the extension is there, else with a labelled heuristic;
//! - **builds that never block writers**: `CREATE INDEX … ON ONLY audit_log` (invalid, instant), `CREATE INDEX
//!   CONCURRENTLY` per partition, `ALTER INDEX … ATTACH PARTITION`, then check the parent is valid; resumable
//!   after a crash; one builder at a time (session advisory lock).
//!
//! See docs/indexes.md.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod build;
mod config;
mod findings;
mod history;
mod recommend;
mod sql;

use std::collections::BTreeMap;
use std::time::Duration;

use audit_core::indexes::{
    AppliedAction, ApplyPolicy, Costing, FindingKind, IndexAction, IndexAdvisor, IndexFinding, IndexRecommendation,
    IndexReport, IndexUsage, protection_reason,
};
use audit_core::{AuditError, AuditResult};
use audit_pg::{ConnectOptions, Connector, pg_error};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

pub use build::{BUILD_LOCK_KEY, leaf_index_name};
pub use config::IndexConfig;

use findings::{Catalogued, Stray};

/// Indexes the manager names itself start with this (`audit_log_auto_<columns>_idx`).
pub const AUTO_PREFIX: &str = "audit_log_auto_";

/// The index manager of one database.
#[derive(Debug, Clone)]
pub struct IndexManager {
    connector: Connector,
    config: IndexConfig,
}

/// What one catalog read returns.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) indexes: Vec<Catalogued>,
    pub(crate) strays: Vec<Stray>,
    /// Rows inserted into audit_log per day over the statistics window.
    pub(crate) inserts_per_day: f64,
    /// Estimated rows of audit_log.
    pub(crate) rows: f64,
    /// Leaf partitions.
    pub(crate) leaves: Vec<String>,
    pub(crate) now: DateTime<Utc>,
}

impl IndexManager {
    /// A manager that opens its connections through `connector` (no statement timeout: a concurrent build runs
    /// for as long as the partition takes; every DDL step waits under `lockTimeoutMs` instead).
    pub fn new(connector: &Connector, config: IndexConfig) -> Self {
        let connector = connector.with_options(ConnectOptions {
            statement_timeout: None,
            application_name: "audit-db indexes".into(),
            ..connector.options().clone()
        });
        Self { connector, config }
    }

    /// The configuration in force.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub(crate) async fn connect(&self) -> AuditResult<Client> {
        self.connector.connect().await.map_err(|e| e.context("index manager"))
    }

    /// Reads indexes, partition indexes, their counters and the usage history; stores a snapshot first when
    /// `record` is set.
    pub(crate) async fn catalog(&self, c: &Client, record: bool) -> AuditResult<Catalog> {
        let window =
            c.query_one(sql::STATS_WINDOW, &[]).await.map_err(|e| pg_error(e, "reading the statistics window"))?;
        let since: DateTime<Utc> = window.get("since");
        let now: DateTime<Utc> = window.get("now");
        let days = ((now - since).num_seconds().max(60) as f64) / 86_400.0;

        let parents =
            c.query(sql::PARENT_INDEXES, &[]).await.map_err(|e| pg_error(e, "reading audit_log's indexes"))?;
        let leaves = c.query(sql::LEAF_INDEXES, &[]).await.map_err(|e| pg_error(e, "reading partition indexes"))?;
        let tables = c.query(sql::LEAF_TABLES, &[]).await.map_err(|e| pg_error(e, "reading partitions"))?;
        let strays = c.query(sql::STRAY_LEFTOVERS, &[]).await.map_err(|e| pg_error(e, "reading leftovers"))?;
        let columns = c.query(sql::COLUMN_STATS, &[]).await.map_err(|e| pg_error(e, "reading column statistics"))?;
        let width: BTreeMap<String, i32> = columns
            .iter()
            .map(|r| (r.get::<_, String>("name"), r.get::<_, Option<i32>>("avg_width").unwrap_or(16)))
            .collect();

        let partitions_total = tables.len() as i64;
        let inserted: i64 = tables.iter().map(|r| r.get::<_, i64>("n_tup_ins")).sum();
        let rows: f64 = tables.iter().map(|r| r.get::<_, f64>("reltuples")).sum();

        if record {
            let at = now;
            for r in &leaves {
                let (index, leaf): (String, String) = (r.get("index_name"), r.get("leaf_index"));
                let (scan, read, size): (i64, i64, i64) =
                    (r.get("idx_scan"), r.get("idx_tup_read"), r.get("size_bytes"));
                c.execute(sql::INSERT_SNAPSHOT, &[&at, &index, &leaf, &scan, &read, &size])
                    .await
                    .map_err(|e| pg_error(e, "storing a usage snapshot"))?;
            }
            let horizon = now - chrono::Duration::days(i64::from(self.config.history_days));
            c.execute(sql::PRUNE_SNAPSHOTS, &[&horizon]).await.map_err(|e| pg_error(e, "pruning usage snapshots"))?;
        }
        let readings: Vec<history::Reading> = c
            .query(sql::SNAPSHOTS, &[])
            .await
            .map_err(|e| pg_error(e, "reading the usage history"))?
            .iter()
            .map(|r| history::Reading {
                taken_at: r.get("taken_at"),
                index: r.get("index_name"),
                leaf: r.get("leaf_index"),
                scans: r.get("idx_scan"),
            })
            .collect();
        let histories = history::fold(&readings);

        let mut indexes = Vec::with_capacity(parents.len());
        for p in &parents {
            let name: String = p.get("name");
            let mine: Vec<_> = leaves.iter().filter(|l| l.get::<_, String>("index_name") == name).collect();
            let scans: i64 = mine.iter().map(|l| l.get::<_, i64>("idx_scan")).sum();
            let tuples_read: i64 = mine.iter().map(|l| l.get::<_, i64>("idx_tup_read")).sum();
            let size_bytes: i64 = mine.iter().map(|l| l.get::<_, i64>("size_bytes")).sum();
            let covered_inserts: i64 = mine.iter().map(|l| l.get::<_, i64>("n_tup_ins")).sum();
            let covered_rows: f64 = mine.iter().map(|l| l.get::<_, f64>("reltuples")).sum();
            let leaves_ready = mine.iter().all(|l| l.get::<_, bool>("indisready") && l.get::<_, bool>("indisvalid"));
            let cols: Vec<String> = p.get("columns");
            let method: String = p.get("method");
            let (unique, primary): (bool, bool) = (p.get("indisunique"), p.get("indisprimary"));
            let h = histories.get(&name).cloned().unwrap_or_default();
            let expected_bytes = (method == "btree" && covered_rows > 1000.0).then(|| {
                let w: i32 = cols.iter().map(|c| width.get(c.trim_matches('"')).copied().unwrap_or(16)).sum();
                (covered_rows * f64::from(w + 16) / 0.9) as i64
            });
            indexes.push(Catalogued {
                usage: IndexUsage {
                    definition: p.get("def"),
                    protected: protection_reason(&name, unique, primary).map(str::to_string),
                    columns: cols,
                    predicate: p.get("predicate"),
                    method,
                    unique,
                    valid: p.get("indisvalid"),
                    ready: p.get::<_, bool>("indisready") && leaves_ready,
                    partitions_covered: mine.len() as i64,
                    partitions_total,
                    scans,
                    tuples_read,
                    size_bytes,
                    first_seen: h.first_seen,
                    first_used: h.first_used,
                    last_used: h.last_used,
                    history_scans: h.scans,
                    write_entries_per_day: covered_inserts as f64 / days,
                    name,
                },
                opclasses: p.get::<_, String>("opclasses").split_whitespace().map(str::to_string).collect(),
                natts: p.get("natts"),
                nkeyatts: p.get("nkeyatts"),
                expected_bytes,
            });
        }
        let strays = strays
            .iter()
            .map(|r| Stray {
                name: r.get("name"),
                table: r.get("table_name"),
                size_bytes: r.get("size_bytes"),
                valid: r.get("indisvalid"),
                ready: r.get("indisready"),
            })
            .collect();
        Ok(Catalog {
            indexes,
            strays,
            inserts_per_day: inserted as f64 / days,
            rows,
            leaves: tables.iter().map(|r| r.get("name")).collect(),
            now,
        })
    }

    /// Records one action in `audit_index_actions` and the metrics.
    pub(crate) async fn record_action(&self, c: &Client, action: &str, index: &str, outcome: &str, detail: &str) {
        metrics::counter!(audit_core::metrics::INDEX_ACTIONS, "action" => action.to_string(), "outcome" => outcome.to_string())
            .increment(1);
        let detail = serde_json::json!({"outcome": outcome, "detail": detail});
        if let Err(e) = c.execute(sql::INSERT_ACTION, &[&index, &action, &detail]).await {
            tracing::warn!(index, action, error = %pg_error(e, "recording an index action"), "could not record");
        }
    }

    /// Sets the gauges of an analysis.
    fn publish(report: &IndexReport) {
        use audit_core::metrics::{INDEX_FINDINGS, INDEX_RECOMMENDATIONS, INDEX_SCANS, INDEX_SIZE_BYTES};
        for u in &report.indexes {
            metrics::counter!(INDEX_SCANS, "index" => u.name.clone()).absolute(u.scans.max(0) as u64);
            metrics::gauge!(INDEX_SIZE_BYTES, "index" => u.name.clone()).set(u.size_bytes as f64);
        }
        for kind in [
            FindingKind::Unused,
            FindingKind::Duplicate,
            FindingKind::Redundant,
            FindingKind::Invalid,
            FindingKind::MissingOnPartitions,
            FindingKind::Bloated,
        ] {
            let n = report.findings.iter().filter(|f| f.kind == kind).count();
            let label =
                serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            metrics::gauge!(INDEX_FINDINGS, "kind" => label).set(n as f64);
        }
        for (label, pick) in [("create", 0), ("drop", 1), ("repair", 2)] {
            let n = report
                .recommendations
                .iter()
                .filter(|r| {
                    matches!(
                        (&r.action, pick),
                        (IndexAction::Create { .. }, 0)
                            | (IndexAction::Drop { .. }, 1)
                            | (IndexAction::Repair { .. }, 2)
                    )
                })
                .count();
            metrics::gauge!(INDEX_RECOMMENDATIONS, "action" => label).set(n as f64);
        }
    }

    /// Drop and repair recommendations that follow from the findings.
    fn maintenance_recommendations(catalog: &Catalog, findings: &[IndexFinding]) -> Vec<IndexRecommendation> {
        let mut out: Vec<IndexRecommendation> = Vec::new();
        for f in findings {
            let action = match f.kind {
                FindingKind::Invalid | FindingKind::MissingOnPartitions => {
                    IndexAction::Repair { name: f.index.clone() }
                }
                FindingKind::Unused | FindingKind::Duplicate | FindingKind::Redundant if f.droppable => {
                    IndexAction::Drop { name: f.index.clone() }
                }
                _ => continue,
            };
            if out.iter().any(|r| r.action == action) {
                continue;
            }
            let write = catalog
                .indexes
                .iter()
                .find(|c| c.usage.name == f.index)
                .map(|c| c.usage.write_entries_per_day)
                .unwrap_or(0.0);
            out.push(IndexRecommendation {
                action,
                why: format!("{:?}: {}", f.kind, f.reason).to_lowercase(),
                statements: Vec::new(),
                estimated_saving_ms_per_day: 0.0,
                estimated_saving_ratio: 0.0,
                costing: None,
                write_entries_per_day: write,
                size_bytes: f.size_bytes,
            });
        }
        out
    }
}

impl IndexAdvisor for IndexManager {
    async fn status(&self) -> AuditResult<Vec<IndexUsage>> {
        let c = self.connect().await?;
        let catalog = self.catalog(&c, true).await?;
        Ok(catalog.indexes.into_iter().map(|c| c.usage).collect())
    }

    async fn analyze(&self) -> AuditResult<IndexReport> {
        let c = self.connect().await?;
        let catalog = self.catalog(&c, true).await?;
        let findings =
            findings::findings(&catalog.indexes, &catalog.strays, catalog.now, self.config.unused_threshold_days);
        let mut recommendations = Self::maintenance_recommendations(&catalog, &findings);
        let workload = recommend::recommend(self, &c, &catalog).await?;
        recommendations.extend(workload.recommendations);
        let report = IndexReport {
            at: catalog.now,
            indexes: catalog.indexes.into_iter().map(|c| c.usage).collect(),
            findings,
            recommendations,
            workload_available: workload.available,
            costing: workload.costing,
        };
        Self::publish(&report);
        Ok(report)
    }

    async fn apply(&self, actions: &[IndexAction], policy: ApplyPolicy) -> AuditResult<Vec<AppliedAction>> {
        build::apply(self, actions, policy).await
    }
}

impl IndexManager {
    /// Drops one index on an operator's explicit command (never a protected one).
    pub async fn drop_index(&self, name: &str, dry_run: bool) -> AuditResult<AppliedAction> {
        let policy = ApplyPolicy { allow_create: false, allow_drop: true, dry_run };
        let mut done = build::apply(self, &[IndexAction::Drop { name: name.to_string() }], policy).await?;
        done.pop().ok_or_else(|| AuditError::permanent("drop produced no outcome"))
    }

    /// One round of the background task: analysis, then what the configuration allows (creations with
    /// `enableAutoCreation`, drops with `enableAutoDrop`; repairs of half-done builds always), each action logged.
    pub async fn run_round(&self) -> AuditResult<(IndexReport, Vec<AppliedAction>)> {
        let report = self.analyze().await?;
        let actions: Vec<IndexAction> = report.recommendations.iter().map(|r| r.action.clone()).collect();
        let policy = ApplyPolicy {
            allow_create: self.config.enable_auto_creation,
            allow_drop: self.config.enable_auto_drop,
            dry_run: false,
        };
        let applied = self.apply(&actions, policy).await?;
        for a in &applied {
            tracing::info!(index = a.action.index_name(), outcome = %a.outcome, detail = %a.detail, "index action");
        }
        Ok((report, applied))
    }

    /// The analysis interval, or `None` when background analysis is off.
    pub fn analysis_interval(&self) -> Option<Duration> {
        (self.config.analysis_interval > 0).then(|| Duration::from_millis(self.config.analysis_interval))
    }

    /// The costing this manager can use on this database.
    pub async fn costing(&self) -> AuditResult<Costing> {
        let c = self.connect().await?;
        Ok(if recommend::hypopg_ready(&c).await? { Costing::Hypopg } else { Costing::Heuristic })
    }
}
