//! audit-core: the vocabulary shared by every audit-db crate — events, validation rules, filters, errors and the
//! traits through which the crates meet.
//!
//! Architecture invariant: this crate does no I/O — no sockets, no files, no clock reads except where a caller
//! passes `now`. Everything here is deterministic and unit-testable.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod error;
pub mod event;
pub mod filter;
pub mod indexes;
pub mod metrics;
pub mod privacy;
pub mod retry;
pub mod routing;
pub mod traits;
pub mod validate;

pub use error::{AuditError, AuditResult, ErrorClass, ErrorKind, SqlState, classify_sqlstate};
pub use event::{DataClassification, NewEvent, Status, StoredEvent};
pub use filter::{Cursor, EventFilter, Page, TimeRange};
pub use indexes::IndexAdvisor;
pub use privacy::{ERASED, KeyManager, PersonalData, PersonalField, PersonalFields};
pub use retry::RetrySchedule;
pub use routing::{CommitLsn, Consistency, PrimaryOnly, ReadRoute, ReadRouter, Routed};
pub use traits::*;
pub use validate::{ValidationError, Validator};
