//! audit-integrity: tamper evidence. The canonical form of a stored event, RFC 6962 Merkle trees, signed
//! checkpoints, the pure core of `audit-db verify`, and evidence packs (all deterministic, no I/O; specified byte by
//! byte in `docs/integrity.md`), plus [`store`], their PostgreSQL side: sealing logs, verifying stored rows,
//! proofs and pack export.

#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod canonical;
pub mod checkpoint;
pub mod config;
pub mod merkle;
pub mod pack;
pub mod store;
pub mod verify;

pub use canonical::{
    DOMAIN, LeafPrefix, canonical_bytes, canonical_bytes_raw, canonical_json, canonical_json_text, leaf_hash,
    leaf_hash_raw,
};
pub use checkpoint::{Checkpoint, NoteSigner, NoteVerifier, SigningKeyFile, origin_for};
pub use config::IntegrityConfig;
pub use merkle::{
    CompactRange, EMPTY_ROOT, Hash, MerkleTree, NodeSource, TILE_HEIGHT, TiledTree, consistency_proof,
    consistency_proof_by, hash_children, hash_leaf, inclusion_proof, inclusion_proof_by, nodes_read_by, root, root_by,
    subtree_root, verify_consistency, verify_inclusion,
};
pub use pack::{
    PackFileEntry, PackManifest, PackReport, ProofEntry, ProofsFile, build_pack, event_from_json, verify_pack,
};
pub use verify::{Finding, FindingKind, RowView, TILE_SIZE, TrustedCheckpoint, verify_incremental, verify_log};

/// Why an integrity artefact (key, note, frontier, proof, pack, event JSON) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// A key text (private or public) does not follow the note key format.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// A signed note or checkpoint body does not follow the format.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// A signature is present but does not verify, or no signature by the expected key is present.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A stored compact range (`frontier`) cannot be parsed.
    #[error("malformed frontier: {0}")]
    MalformedFrontier(String),
    /// An event's JSON form cannot be turned back into a stored event.
    #[error("malformed event: {0}")]
    MalformedEvent(String),
    /// Evidence does not match what was signed (hash, proof, organisation).
    #[error("integrity violation: {0}")]
    Mismatch(String),
}

impl From<IntegrityError> for audit_core::AuditError {
    fn from(e: IntegrityError) -> Self {
        match e {
            IntegrityError::MalformedKey(_) => audit_core::AuditError::invalid(e.to_string()),
            _ => audit_core::AuditError::integrity(e.to_string()),
        }
    }
}
