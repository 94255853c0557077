//! audit-pg: the one PostgreSQL layer of audit-db.
//!
//! Every crate that talks to PostgreSQL does it through here, so that there is one definition of each thing that
//! must agree everywhere: how to connect (connect timeout, server-side `statement_timeout`, UTC sessions, TLS),
//! the connection pool, how a driver error becomes an [`audit_core::AuditError`] (kind and SQLSTATE, never message
//! text), the migrations, the column list of `audit_log` and the mapping between its rows and
//! [`audit_core::StoredEvent`], the binary COPY encoder, and identifier quoting.
//!
//! Architecture invariant: no connection is opened without a deadline; no error leaves this crate without its
//! SQLSTATE (when the server sent one) and a kind decided from typed fields.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod config;
mod connect;
mod copy_out;
mod error;
mod event_row;
mod ident;
mod migrate;
mod pool;
pub mod pruned_leaves;
mod query;
pub mod schema;
pub mod tls;

pub use config::DatabaseConfig;
pub use connect::{ConnectOptions, Connector, redact};
pub use copy_out::{BinaryTuples, RawEventRow, copy_out_events_sql};
pub use error::{is_creation_race, pg_error, pool_error};
pub use event_row::{COPY_TYPES, EVENT_COLUMNS, EventRow, RawJsonb, copy_sql, stored_event_from_row, write_event_row};
pub use ident::{quote_ident, quote_literal};
pub use migrate::{MIGRATIONS, pending_migrations, revert_last, run_migrations};
pub use pool::{PgConn, PgManager, PgPool, PoolOptions, PooledConn, build_pool, checkout};
pub use query::{BuiltQuery, build_query};
pub use tls::describe_target;
