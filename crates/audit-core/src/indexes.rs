//! The index manager's vocabulary: usage of each `audit_log` index summed over its partitions, findings,
//! recommendations and the actions that carry them out, and the trait ([`IndexAdvisor`]) the server drives.
//!
//! The one list of indexes that are never proposed for dropping ([`PROTECTED_INDEXES`]) lives here, where every
//! crate can see it: the integrity log reads `(organization_id, seq)` in order, the write path relies on the event
//! key, and the partition manager re-creates the key under other strategies.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::AuditResult;

/// Indexes of `audit_log` that are never proposed for dropping, whatever their usage: the primary key (event
/// identity, duplicate refusal), the unique event key of the hash/list strategies (audit-partition's
/// `EVENT_KEY_INDEX`), and the integrity log's `(organization_id, seq)` index (ordered leaf reads of verify and
/// checkpoint; an idle verifier must not make it look unused). Unique indexes are protected too, by type.
pub const PROTECTED_INDEXES: &[&str] = &["audit_log_pkey", "audit_log_event_key", "audit_log_log_seq_idx"];

/// Why an index is protected, or `None` when it is not.
pub fn protection_reason(name: &str, unique: bool, primary: bool) -> Option<&'static str> {
    if primary {
        Some("primary key")
    } else if PROTECTED_INDEXES.contains(&name) {
        Some("needed by the integrity log or the write path")
    } else if unique {
        Some("unique index (enforces a constraint)")
    } else {
        None
    }
}

/// One index of `audit_log` (the partitioned parent), its state and its use summed over the partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexUsage {
    /// The parent index's name.
    pub name: String,
    /// `pg_get_indexdef` of the parent index.
    pub definition: String,
    /// Key columns (or expressions), in order.
    pub columns: Vec<String>,
    /// Partial-index predicate, if any.
    pub predicate: Option<String>,
    /// Access method (`btree`, `gin`, …).
    pub method: String,
    /// Primary key or unique.
    pub unique: bool,
    /// Why it is never dropped (see [`PROTECTED_INDEXES`]), or `None`.
    pub protected: Option<String>,
    /// The parent index is valid (every partition has its index attached).
    pub valid: bool,
    /// Every partition index is ready for inserts.
    pub ready: bool,
    /// Leaf partitions that have this index attached.
    pub partitions_covered: i64,
    /// Leaf partitions of `audit_log`.
    pub partitions_total: i64,
    /// Index scans since the last statistics reset, summed over the partition indexes.
    pub scans: i64,
    /// Index entries returned by scans, summed.
    pub tuples_read: i64,
    /// Bytes of the partition indexes, summed.
    pub size_bytes: i64,
    /// First snapshot that saw this index (start of the evidence window), from the usage history.
    pub first_seen: Option<DateTime<Utc>>,
    /// Snapshot at which use was first seen in the history.
    pub first_used: Option<DateTime<Utc>>,
    /// Latest snapshot at which use had grown (the use happened between it and the snapshot before).
    pub last_used: Option<DateTime<Utc>>,
    /// Scans counted by the history (survives statistics resets).
    pub history_scans: i64,
    /// Estimated write cost: index entries written per day (rows inserted into the covered partitions per day).
    pub write_entries_per_day: f64,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// No scan in the last `unusedThresholdDays` (with at least that much history).
    Unused,
    /// Same method, columns and predicate as another index.
    Duplicate,
    /// Its columns are a leading prefix of another index with the same method and predicate.
    Redundant,
    /// Invalid or unready leftover of a failed or interrupted concurrent build.
    Invalid,
    /// Some partitions lack it (parent index invalid).
    MissingOnPartitions,
    /// Larger than its entries need (estimate).
    Bloated,
}

/// One problem with one index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexFinding {
    /// The index (parent name, or a partition index name for stray leftovers).
    pub index: String,
    /// What kind of problem.
    pub kind: FindingKind,
    /// The evidence, in words (other index, window, partitions …).
    pub reason: String,
    /// Whether dropping it may be proposed (false for protected indexes).
    pub droppable: bool,
    /// Bytes it occupies.
    pub size_bytes: i64,
}

/// How a recommendation's saving was estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Costing {
    /// Planner cost of each statement with and without a HypoPG hypothetical index on every partition.
    Hypopg,
    /// HypoPG is not installed: the statement's seq-scan share is assumed saved (a labelled guess).
    Heuristic,
}

/// A statement that motivates a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementEvidence {
    /// `pg_stat_statements.queryid`.
    pub queryid: i64,
    /// The normalised statement text.
    pub query: String,
    /// Calls since the statistics reset.
    pub calls: i64,
    /// Mean execution time, ms.
    pub mean_ms: f64,
    /// Planner cost now.
    pub cost_before: f64,
    /// Planner cost with the index (hypothetical or estimated).
    pub cost_after: f64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexAction {
    /// Build a btree index on `audit_log (columns)` on every partition without blocking writers.
    Create {
        /// Name of the new parent index.
        name: String,
        /// Key columns in order.
        columns: Vec<String>,
    },
    /// Drop an index (never a protected one).
    Drop {
        /// Parent index name.
        name: String,
    },
    /// Finish or remove a half-done build.
    Repair {
        /// The invalid index.
        name: String,
    },
}

impl IndexAction {
    /// The index the action is about.
    pub fn index_name(&self) -> &str {
        match self {
            IndexAction::Create { name, .. } | IndexAction::Drop { name } | IndexAction::Repair { name } => name,
        }
    }
}

/// A proposed action with its reasons and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRecommendation {
    /// What.
    pub action: IndexAction,
    /// Why, in words.
    pub why: String,
    /// The statements it helps (creations) — empty for drops and repairs.
    pub statements: Vec<StatementEvidence>,
    /// Estimated execution time saved per day of the observed workload, ms (creations), or 0.
    pub estimated_saving_ms_per_day: f64,
    /// Estimated saving as a share of the affected statements' time (0..1).
    pub estimated_saving_ratio: f64,
    /// How the saving was estimated.
    pub costing: Option<Costing>,
    /// Write overhead: index entries written per day (one per inserted row).
    pub write_entries_per_day: f64,
    /// Estimated size (creations) or current size (drops), bytes.
    pub size_bytes: i64,
}

/// The result of one analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexReport {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Every audit_log index.
    pub indexes: Vec<IndexUsage>,
    /// Problems found.
    pub findings: Vec<IndexFinding>,
    /// What to do about them and about the workload.
    pub recommendations: Vec<IndexRecommendation>,
    /// Whether pg_stat_statements could be read (no workload-driven recommendations otherwise).
    pub workload_available: bool,
    /// How savings were costed.
    pub costing: Costing,
}

impl IndexReport {
    /// The analysis as a health component (`indexes`): degraded while an index is invalid or missing on some
    /// partitions (queries fall back to slower plans there); details name the counts an operator looks at.
    pub fn health(&self) -> crate::ComponentHealth {
        let count = |k: FindingKind| self.findings.iter().filter(|f| f.kind == k).count();
        let broken = count(FindingKind::Invalid) + count(FindingKind::MissingOnPartitions);
        crate::ComponentHealth {
            name: "indexes".into(),
            status: if broken > 0 { crate::HealthState::Degraded } else { crate::HealthState::Healthy },
            details: serde_json::json!({
                "analyzed_at": self.at,
                "indexes": self.indexes.iter().map(|u| serde_json::json!({
                    "name": u.name, "scans": u.scans, "size_bytes": u.size_bytes, "valid": u.valid,
                    "partitions": format!("{}/{}", u.partitions_covered, u.partitions_total),
                    "last_used": u.last_used,
                })).collect::<Vec<_>>(),
                "unused": count(FindingKind::Unused),
                "duplicate": count(FindingKind::Duplicate),
                "redundant": count(FindingKind::Redundant),
                "invalid": count(FindingKind::Invalid),
                "missing_on_partitions": count(FindingKind::MissingOnPartitions),
                "recommendations": self.recommendations.len(),
                "workload_available": self.workload_available,
            }),
        }
    }
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedAction {
    /// The action.
    pub action: IndexAction,
    /// `done`, `planned` (dry run), `skipped` (not allowed, or another builder holds the lock) or `failed`.
    pub outcome: String,
    /// Details (partitions built, error).
    pub detail: String,
}

/// What configuration lets [`IndexAdvisor::apply`] do without an explicit operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyPolicy {
    /// Creations may run.
    pub allow_create: bool,
    /// Drops may run.
    pub allow_drop: bool,
    /// Only say what would be done.
    pub dry_run: bool,
}

/// Usage analysis, recommendations and non-blocking index builds for `audit_log`.
pub trait IndexAdvisor: Send + Sync + 'static {
    /// Records a usage snapshot and returns the usage of every index (cheap: catalog and statistics reads).
    fn status(&self) -> impl Future<Output = AuditResult<Vec<IndexUsage>>> + Send;

    /// Usage, findings and recommendations (reads pg_stat_statements; plans statements).
    fn analyze(&self) -> impl Future<Output = AuditResult<IndexReport>> + Send;

    /// Carries out `actions` as `policy` allows; protected indexes are never dropped. Repairs always run.
    fn apply(
        &self,
        actions: &[IndexAction],
        policy: ApplyPolicy,
    ) -> impl Future<Output = AuditResult<Vec<AppliedAction>>> + Send;
}
