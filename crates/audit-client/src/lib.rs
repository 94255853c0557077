//! audit-client: the entry point applications use — durable group-committed inserts, bulk binary COPY, exact
//! queries with keyset paging, transactions, health.
//!
//! Architecture invariant: depends on other audit-db crates only through the traits of `audit-core`
//! (`PartitionProvisioner`, `QueryCache`, `ResiliencePolicy`, `ReadRouter`), plus the shared foundations audit-pg (the one
//! PostgreSQL layer) and audit-integrity (the leaf hash every row carries).

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod ack;
mod batcher;
mod client;
mod config;
mod health;
mod observe;
mod privacy;
mod reader;
mod store;
mod transaction;
mod writer;

pub use ack::{Ack, BatchItem, BatchReport, CommitLsn, QueryAnswer, Rejection};
pub use audit_core::{Consistency, PrimaryOnly, ReadRoute};
pub use client::{AuditClient, BoxFuture, ClientConfig, PoolUse};
pub use config::IngestConfig;
pub use health::HealthReport;
pub use transaction::{Transaction, TransactionScope};
pub use writer::{PreparedEvent, WriteOutcome};

/// The statement [`AuditClient::query`] sends to the database for `filter` (after the time bounds are normalised;
/// with no personal-data policy), as SQL text and encoded parameters: lets a benchmark run the very same SQL as a
/// raw prepared statement beside the client.
pub fn query_statement(filter: &audit_core::EventFilter) -> audit_core::AuditResult<audit_pg::BuiltQuery> {
    reader::page_statement(&filter.normalized()).map(|(statement, _)| statement)
}
