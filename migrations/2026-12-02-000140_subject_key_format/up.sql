-- The stored form a subject key seals values in (docs/compliance.md, "What is stored"): 1 = `pd1.` (hex key id,
-- AES-256-GCM with its synthetic nonce stored), 2 = `pd2.` (base64 key id, AES-256-GCM-SIV with no stored nonce:
-- 26 characters shorter per value). Per key, so that a subject's equality token stays one string: keys created
-- before keep sealing as `pd1`, new keys seal as `pd2`; readers open both. Adding a column with a constant default
-- rewrites nothing. Owned by audit-privacy (store.rs).
ALTER TABLE audit_subject_keys
    ADD COLUMN value_format smallint NOT NULL DEFAULT 1 CHECK (value_format IN (1, 2));
