//! audit-fhir: audit-db events as FHIR R4 `AuditEvent` resources and back, following IHE Basic Audit Log
//! Patterns (BALP) where the event's action has a natural BALP/DICOM code.
//!
//! Hospitals exchange audit records as FHIR AuditEvents (IHE ATNA / BALP); this crate lets audit-db speak that
//! format in both directions without losing what audit-db adds: each exported resource carries the event's
//! `seq`, leaf hash and ingest time as extensions, so a FHIR consumer can ask `audit-db proof --event-id <id>` for
//! the inclusion proof. docs/fhir.md has the full mapping, the code systems and what is lossy.
//!
//! Architecture invariant: pure. No I/O (the writers write into a caller's `std::io::Write`), no clock, no
//! environment. Depends only on audit-core's event types.
//!
//! API for the edges: export with [`to_audit_event`], [`bundle_collection`], [`BundleWriter`] and
//! [`write_ndjson`]; ingest with [`from_audit_event`] or [`from_fhir`] (AuditEvent or Bundle), whose result goes
//! to audit-core's `Validator::validate_value` like any NDJSON event; [`proof_reference`] reads back what a
//! consumer needs to ask for a proof.

mod action;
pub mod codes;
mod escape;
mod export;
mod ingest;
pub mod model;

pub use action::{ActionCode, EventCoding, action_for, coding_for, guess_action_code};
pub use export::{
    BundleWriter, ExportContext, bundle_collection, bundle_page, to_audit_event, to_audit_event_model, write_ndjson,
};
pub use ingest::{ProofReference, from_audit_event, from_fhir, proof_reference};
pub use model::BundleLink;

/// A FHIR resource that cannot be mapped to an audit-db event: which element (FHIR path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FhirError {
    /// FHIR path of the offending element, e.g. `AuditEvent.recorded` or `Bundle.entry[3].resource.outcome`.
    pub path: String,
    /// What was wrong, with the value where it helps.
    pub reason: String,
}

impl FhirError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }
}

impl From<FhirError> for audit_core::AuditError {
    fn from(e: FhirError) -> Self {
        audit_core::AuditError::invalid(e.to_string())
    }
}
