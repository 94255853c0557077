-- Crypto-shredding (docs/compliance.md): per-subject keys, wrapped under the master key, found by a keyed hash of
-- the subject's id (never the id itself). Erasure deletes the row; every value sealed under it becomes unreadable
-- while audit_log, its leaf hashes, checkpoints and proofs stay as they are. Owned by audit-privacy (store.rs).
CREATE TABLE audit_subject_keys (
    key_id        bytea       PRIMARY KEY CHECK (octet_length(key_id) = 16),
    subject_index bytea       NOT NULL UNIQUE CHECK (octet_length(subject_index) = 32),
    wrapped_key   bytea       NOT NULL,
    master_key_id text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_subject_keys IS
    'Per-subject data keys for personal values in audit_log, wrapped under the master key; DELETE = erasure.';

-- A personal value is stored as `pd1.<key id>.<base64url(nonce, ciphertext, tag)>`: about 27 + 4/3 × (28 + bytes)
-- characters, so the identifier columns that may hold one grow (varchar length increase: no rewrite, indexes kept).
-- The validator still limits the plaintext to 255 characters.
ALTER TABLE audit_log ALTER COLUMN principal_id TYPE varchar(2048);
ALTER TABLE audit_log ALTER COLUMN target_resource_id TYPE varchar(2048);
