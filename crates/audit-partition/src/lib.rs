//! audit-partition: the time partitions of `audit_log`.
//!
//! [`PartitionManager`] implements [`audit_core::PartitionProvisioner`] for the write path and adds what
//! operators need: premake, per-strategy partition trees (range; range × hash of `organization_id`; range × list of
//! `data_classification`), retention with archive and legal holds, status/analysis, and maintenance coordinated
//! across instances by a session-level advisory lock.
//!
//! Rules kept everywhere: a partition is built detached and attached with `ATTACH PARTITION` (SHARE UPDATE
//! EXCLUSIVE on `audit_log`, so readers and writers are never blocked), dropped only after `DETACH … CONCURRENTLY`;
//! every DDL runs under `lock_timeout` with bounded retry; there is never a DEFAULT partition.

mod archive;
mod db;
mod maintenance;
mod manager;
mod period;
mod retention;
mod status;

pub use archive::{Archive, ArchiveFuture, ArchiveManifest, ArchiveReceipt, DirArchive, sha256_file};
pub use maintenance::MaintenanceReport;
pub use manager::{EVENT_KEY_INDEX, HoldTarget, LegalHold, MAINTENANCE_LOCK_KEY, PartitionManager, strategy_name};
pub use period::{PARENT_TABLE, Period, interval_name, ts_literal};
pub use retention::{RetentionAction, RetentionItem, RetentionReport, RetentionRules};
pub use status::{OversizedPartition, PartitionAnalysis, PartitionState, PartitionStatus};
