//! audit-replica: read-replica routing for audit-db (the seed's Read Replica Router, for real).
//!
//! [`ReplicaRouter`] implements audit-core's [`audit_core::ReadRouter`]: the client offers it every read that need
//! not see the primary, and it runs the read on a streaming replica that satisfies the read's
//! [`audit_core::Consistency`] — one that has replayed a read-your-writes position (waiting a bounded time for it),
//! lags less than a bounded-staleness bound, and is healthy — chosen by a [`Strategy`]. Health comes from probes
//! every `healthCheckInterval`: `pg_is_in_recovery()`, replay position against the primary's current WAL position
//! (lag in bytes), lag in seconds that an idle primary does not inflate (see `docs/replicas.md`), and
//! probe latency. Replicas that are down, lag past their bound or were promoted serve nothing until they recover;
//! with none left, reads fall back to the primary (`fallbackToMaster`) or fail naming each replica's state.
//!
//! Architecture invariant: a replica never answers a read its consistency forbids; a replica failing mid-read fails
//! no read (another server answers). Depends on audit-core and audit-pg only; the per-replica resilience policy
//! comes in as audit-core's `ResiliencePolicy`.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod config;
mod lag;
mod router;
mod strategy;

pub use config::{ReplicaEndpoint, RouterConfig, Strategy, check_replicas};
pub use router::{Exclusion, ReplicaPoolUse, ReplicaRouter, ReplicaStatus, RouterStatus};
