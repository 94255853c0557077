-- The key of subject indexes (audit_subject_keys.subject_index = HMAC(index key, subject id)), wrapped under the
-- master key (docs/compliance.md, "Master-key rotation"). The index key belongs to the data, not to one master key:
-- a rotation re-wraps it with the subject keys, so every subject keeps its index (and its key) under the new master.
-- One row, written on first use (the index key derived from the master key then in use). Owned by audit-privacy.
CREATE TABLE audit_subject_index_key (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    wrapped_key   bytea       NOT NULL,
    master_key_id text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_subject_index_key IS
    'The HMAC key of audit_subject_keys.subject_index, wrapped under the master key; re-wrapped by a rotation.';
