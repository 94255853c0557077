//! audit-privacy: crypto-shredding of personal data (GDPR Art. 17) in an append-only, hash-chained log.
//!
//! Each personal value (`principal_id`, `target_resource_id`, named `details` keys — see [`PrivacyConfig`]) is
//! stored encrypted (AES-256-GCM-SIV; AES-256-GCM for keys made before the `pd2` form) under a key of its data
//! subject, in a deterministic form that doubles as the equality token. Subject keys live in `audit_subject_keys`,
//! wrapped under a master key ([`FileMasterKey`], or any [`audit_core::KeyManager`] such as a KMS later) and found by a keyed hash of the subject's id, never the id.
//! The write path seals before the leaf hash is computed, so checkpoints, proofs and evidence packs cover the
//! ciphertext and stay valid when erasure destroys the key ([`Shredder::destroy_key`]); the read path opens values
//! or shows `[erased]`.
//!
//! Architecture invariant: the client reaches this crate only through [`audit_core::PersonalData`]; the SQL of
//! subject keys lives in `store.rs` and nowhere else; no key material is logged or formatted.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

mod cipher;
mod config;
mod shredder;
mod store;

pub use cipher::{
    FileMasterKey, KEY_ID_LEN, STORED_PREFIX_V1, STORED_PREFIX_V2, SubjectKey, ValueFormat, is_stored, parse_stored,
};
pub use config::PrivacyConfig;
pub use shredder::{ErasurePlan, MasterRotation, Shredder};
pub use store::SubjectEvents;

/// File name `audit-db keygen --master` writes.
pub const MASTER_KEY_FILE_NAME: &str = "master.key";
