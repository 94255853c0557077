//! Names of the metrics the partition manager records (one definition each, for dashboards and docs).

/// Partitions created (premake, on-demand coverage, `ensure_range`).
pub const CREATED: &str = "audit_partition_created_total";
/// Partitions archived and dropped by retention.
pub const DROPPED: &str = "audit_partition_dropped_total";
/// DDL steps that hit `lock_timeout` and were retried.
pub const LOCK_TIMEOUTS: &str = "audit_partition_lock_timeouts_total";
/// Maintenance runs that ran (this instance held the maintenance lock).
pub const MAINTENANCE_RUNS: &str = "audit_partition_maintenance_runs_total";
/// Maintenance runs skipped because another instance held the lock.
pub const MAINTENANCE_SKIPPED: &str = "audit_partition_maintenance_skipped_total";
