//! Integrity primitives (canonical form, RFC 6962 Merkle trees, signed checkpoints).
