-- Tenant API keys of the HTTP service. Only a SHA-256 of each key is stored (the key itself is printed once, at
-- creation); a key is bound to one organisation and carries scopes (ingest, query, verify, admin). Revocation sets
-- revoked_at and is never undone, so the row stays as evidence of who could access what, and when.
CREATE TABLE audit_api_keys (
    id              uuid         PRIMARY KEY,
    organization_id varchar(255) NOT NULL CHECK (organization_id <> ''),
    name            varchar(255) NOT NULL,
    scopes          text[]       NOT NULL CHECK (scopes <@ ARRAY['ingest', 'query', 'verify', 'admin']::text[]
                                                 AND cardinality(scopes) > 0),
    key_hash        bytea        NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at      timestamptz  NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX audit_api_keys_org_idx ON audit_api_keys (organization_id);
