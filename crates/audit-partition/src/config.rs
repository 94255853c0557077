//! `[partition]`: how `audit_log` is partitioned and aged out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How time partitions are subdivided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionStrategy {
    /// Time ranges only.
    Range,
    /// Time ranges, each sub-partitioned by hash of `organization_id`.
    Hash,
    /// Time ranges, each sub-partitioned by `data_classification`.
    List,
}

/// Length of one time partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    /// Calendar months (UTC).
    Monthly,
    /// Calendar quarters (UTC).
    Quarterly,
    /// Calendar years (UTC).
    Yearly,
}

impl PartitionInterval {
    /// The configured and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
            Self::Yearly => "yearly",
        }
    }
}

impl std::str::FromStr for PartitionInterval {
    type Err = String;

    /// Parses `monthly|quarterly|yearly` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Monthly, Self::Quarterly, Self::Yearly]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not one of monthly, quarterly, yearly"))
    }
}

impl PartitionStrategy {
    /// The configured and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::Hash => "hash",
            Self::List => "list",
        }
    }
}

impl std::str::FromStr for PartitionStrategy {
    type Err = String;

    /// Parses `range|hash|list` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Range, Self::Hash, Self::List]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not one of range, hash, list"))
    }
}

/// `[partition]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionConfig {
    /// Sub-partitioning strategy.
    pub strategy: PartitionStrategy,
    /// Partition key column (only `timestamp` is supported).
    pub partition_column: String,
    /// Time partition length.
    pub interval: PartitionInterval,
    /// Default retention, days (per-classification policies may differ).
    pub retention_days: u32,
    /// Run maintenance in the background.
    pub auto_maintenance: bool,
    /// Background maintenance period, ms.
    pub maintenance_interval: u64,
    /// Periods kept ready ahead of now.
    pub premake: u32,
    /// Hash buckets per period for the `hash` strategy.
    pub hash_buckets: u32,
    /// Where retention archives go.
    pub archive_dir: Option<PathBuf>,
    /// `lock_timeout` for partition DDL, ms.
    pub lock_timeout: u64,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            strategy: PartitionStrategy::Range,
            partition_column: "timestamp".into(),
            interval: PartitionInterval::Monthly,
            retention_days: 2555,
            auto_maintenance: false,
            maintenance_interval: 3_600_000,
            premake: 3,
            hash_buckets: 4,
            archive_dir: None,
            lock_timeout: 2_000,
        }
    }
}

impl PartitionConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.partition_column != "timestamp" {
            return Err(("partition.partitionColumn", "only `timestamp` is supported".into()));
        }
        if self.hash_buckets == 0 || self.hash_buckets > 1024 {
            return Err(("partition.hashBuckets", "must be between 1 and 1024".into()));
        }
        if self.retention_days == 0 {
            return Err(("partition.retentionDays", "must be at least 1".into()));
        }
        if self.maintenance_interval < 1_000 {
            return Err(("partition.maintenanceInterval", "must be at least 1000 ms".into()));
        }
        Ok(())
    }
}
