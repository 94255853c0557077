//! audit-client: the entry point applications use — durable group-committed inserts, bulk binary COPY, exact
//! queries with keyset paging, atomic transactions, health, and the embedded private PostgreSQL default.
//!
//! Architecture invariant: depends on other audit-db crates only through the traits of `audit-core`
//! (`PartitionProvisioner`, `QueryCache`, `ResiliencePolicy`).

mod batcher;
mod client;
pub mod embedded;
pub mod integrity;
mod migrate;
pub mod pg;
mod reader;
mod schema;
mod writer;

pub use client::{
    Ack, AuditClient, BatchItem, BatchReport, HealthReport, QueryAnswer, Transaction, check_reachable, redact,
};
pub use migrate::{MIGRATIONS, revert_last, run_migrations};
pub use writer::{COPY_TYPES, EVENT_COLUMNS, PreparedEvent, WriteOutcome};
