//! audit-core: the types, validation rules, error classes, integrity primitives and traits shared by every
//! audit-db crate.
//!
//! Architecture invariant: this crate does no I/O — no sockets, no files, no clock reads except where a caller
//! passes `now`. Everything here is deterministic and unit-testable.

pub mod config;
pub mod error;
pub mod event;
pub mod filter;
pub mod integrity;
pub mod traits;
pub mod validate;

pub use error::{AuditError, AuditResult, ErrorClass, classify_sqlstate};
pub use event::{DataClassification, NewEvent, Status, StoredEvent};
pub use filter::{Cursor, EventFilter, Page, TimeRange};
pub use traits::*;
pub use validate::{ValidationError, Validator};
