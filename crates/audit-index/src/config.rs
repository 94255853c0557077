//! `[indexes]`: the seed's index-manager settings.

use serde::{Deserialize, Serialize};

/// `[indexes]` (the seed's `createIntelligentIndexManager(db, {…})` options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IndexConfig {
    /// `serve` builds the indexes the workload analysis recommends (`AUDIT_DB_AUTO_INDEX_OPTIMIZATION`). Off by
    /// default: an index costs every write, so adding one is an operator's decision unless they delegate it.
    pub enable_auto_creation: bool,
    /// `serve` drops unused, duplicate and redundant indexes. Off by default (the seed's conservative default);
    /// protected indexes are never dropped either way.
    pub enable_auto_drop: bool,
    /// An index with no scan for this many days (and at least this much usage history) is reported unused.
    pub unused_threshold_days: u32,
    /// How often `serve` records usage and analyses, ms (0: never). Each round stores a usage snapshot, so the
    /// history that makes "unused for N days" trustworthy builds up only while something runs it.
    pub analysis_interval: u64,
    /// Statements called fewer times are not worth an index.
    pub min_calls: i64,
    /// A candidate index must cut the planner cost of the statements it serves by at least this share (0..1).
    pub min_saving_ratio: f64,
    /// `lock_timeout` of each short DDL step of a build or drop, ms (retried with backoff): bounds how long a
    /// writer can queue behind the step.
    pub lock_timeout_ms: u64,
    /// Usage snapshots are kept this many days.
    pub history_days: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            enable_auto_creation: false,
            enable_auto_drop: false,
            unused_threshold_days: 30,
            analysis_interval: 86_400_000,
            min_calls: 10,
            min_saving_ratio: 0.3,
            lock_timeout_ms: 50,
            history_days: 400,
        }
    }
}

impl IndexConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.analysis_interval != 0 && self.analysis_interval < 1_000 {
            return Err(("indexes.analysisInterval", "must be 0 (off) or at least 1000 ms".into()));
        }
        if !(0.0..1.0).contains(&self.min_saving_ratio) {
            return Err(("indexes.minSavingRatio", format!("{} is not in [0, 1)", self.min_saving_ratio)));
        }
        if self.lock_timeout_ms == 0 {
            return Err(("indexes.lockTimeoutMs", "must be at least 1 ms (0 would wait forever)".into()));
        }
        if self.history_days < self.unused_threshold_days {
            return Err(("indexes.historyDays", "must be at least unusedThresholdDays".into()));
        }
        Ok(())
    }
}
