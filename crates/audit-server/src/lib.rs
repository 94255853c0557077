//! audit-server: wiring of the concrete audit-db crates (client, partitions, cache, resilience) for the `audit-db`
//! operator binary and the HTTP service, plus the realistic workload used by `demo` and the benchmarks.
//!
//! Architecture invariant: this is the only crate that names every other crate's concrete types; libraries meet
//! through audit-core's traits, and only binaries install tracing subscribers and metrics exporters.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod api_keys;
pub mod app;
pub mod config;
pub mod fhir;
pub mod filter_params;
pub mod http;
pub mod privacy;
pub mod readiness;
pub mod telemetry;
pub mod workload;
