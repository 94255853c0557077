//! audit-partition: the time partitions of `audit_log`.
//!
//! [`PartitionManager`] implements [`audit_core::PartitionProvisioner`] for the write path and adds what
//! operators need: premake, per-strategy partition trees (range; range × hash of `organization_id`; range × list of
//! `data_classification`), retention with archive and legal holds, status/analysis, sealing of partitions no
//! longer written (the indexes too expensive to keep up row by row built once, then `VACUUM (FREEZE, ANALYZE)`),
//! and maintenance coordinated across instances by a session-level advisory lock.
//!
//! Every statement runs under the manager's [`audit_core::ResiliencePolicy`] (deadline, circuit breaker), on
//! connections opened through an [`audit_pg::Connector`] (connect timeout, UTC sessions): a small pool for
//! on-demand work, dedicated connections only where the session matters (the maintenance lock holder; the
//! maintenance session that detaches concurrently, archives through a cursor and drops).
//!
//! Rules kept everywhere: a partition is built detached and attached with `ATTACH PARTITION` (SHARE UPDATE
//! EXCLUSIVE on `audit_log`, so readers and writers are never blocked), dropped only after `DETACH … CONCURRENTLY`;
//! every DDL runs under `lock_timeout`, retried on lock timeouts over an [`audit_core::RetrySchedule`]; there is
//! never a DEFAULT partition.

mod archive;
mod catalog;
mod config;
mod db;
mod drop;
mod holds;
mod maintenance;
mod manager;
mod period;
mod retention;
mod seal;
mod status;

pub use archive::{Archive, ArchiveFuture, ArchiveManifest, ArchiveReceipt, ArchiveSpace, DirArchive, sha256_file};
pub use config::{PartitionConfig, PartitionInterval, PartitionStrategy};
pub use holds::{HoldTarget, LegalHold};
pub use maintenance::MaintenanceReport;
pub use manager::{EVENT_KEY_INDEX, MAINTENANCE_LOCK_KEY, PartitionManager};
pub use period::{PARENT_TABLE, Period, ts_literal};
pub use retention::{DropTimings, RetentionAction, RetentionItem, RetentionReport, RetentionRules};
pub use seal::{SEAL_GRACE, SEALED_INDEXES, SealReport, SealedIndex};
pub use status::{OversizedPartition, PartitionAnalysis, PartitionState, PartitionStatus};
