-- Tables of audit-partition's PartitionManager: the recorded partitioning scheme, retention policies, legal
-- holds, the append-only retention log, and the retained leaf hashes of dropped rows.

-- The partitioning scheme in force (one row). Recorded by the first PartitionManager that connects; changing it
-- while audit_log has partitions is refused by the manager.
CREATE TABLE audit_partition_config (
    id              boolean      PRIMARY KEY DEFAULT true CHECK (id),
    strategy        varchar(8)   NOT NULL CHECK (strategy IN ('range', 'hash', 'list')),
    period_interval varchar(16)  NOT NULL CHECK (period_interval IN ('monthly', 'quarterly', 'yearly')),
    hash_buckets    integer      NOT NULL CHECK (hash_buckets BETWEEN 1 AND 1024),
    updated_at      timestamptz  NOT NULL DEFAULT now()
);

-- Named retention policies (audit_log.retention_policy). The manager uses the configured retention_days for
-- `standard` and for any policy name not listed here.
CREATE TABLE audit_retention_policies (
    policy_name    varchar(64) PRIMARY KEY,
    retention_days integer     NOT NULL CHECK (retention_days > 0),
    description    text        NOT NULL DEFAULT ''
);
INSERT INTO audit_retention_policies (policy_name, retention_days, description) VALUES
    ('standard', 2555, 'Default: 7 years'),
    ('phi_extended', 2555, 'Protected health information: 7 years'),
    ('minimal', 90, 'Low-value operational events: 90 days'),
    ('confidential', 1825, 'Confidential business data: 5 years')
ON CONFLICT (policy_name) DO NOTHING;

-- A retention floor per data classification: a row is kept for the LONGER of its own retention_policy and the
-- policy its data_classification maps to (so a PHI event tagged `minimal` is still kept 7 years).
CREATE TABLE audit_classification_retention (
    data_classification varchar(16) PRIMARY KEY
        CHECK (data_classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI', 'FINANCIAL')),
    policy_name         varchar(64) NOT NULL REFERENCES audit_retention_policies (policy_name)
);
INSERT INTO audit_classification_retention (data_classification, policy_name) VALUES
    ('PUBLIC', 'minimal'),
    ('INTERNAL', 'minimal'),
    ('CONFIDENTIAL', 'confidential'),
    ('PHI', 'phi_extended'),
    ('FINANCIAL', 'standard')
ON CONFLICT (data_classification) DO NOTHING;

-- Legal holds: while a hold is active (released_at IS NULL), no partition holding a row of that organisation or
-- of that classification is dropped. Exactly one of organization_id / data_classification is set.
CREATE TABLE audit_legal_holds (
    id                  bigserial    PRIMARY KEY,
    organization_id     varchar(255),
    data_classification varchar(16)
        CHECK (data_classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI', 'FINANCIAL')),
    reason              text         NOT NULL CHECK (reason <> ''),
    created_by          text         NOT NULL DEFAULT current_user,
    created_at          timestamptz  NOT NULL DEFAULT now(),
    released_at         timestamptz,
    released_by         text,
    CHECK ((organization_id IS NULL) <> (data_classification IS NULL))
);
CREATE INDEX audit_legal_holds_active_idx ON audit_legal_holds (organization_id, data_classification)
    WHERE released_at IS NULL;

-- What every retention run did: `detaching` (intent, written before a partition is detached), `dropped` (archived,
-- leaves kept, table dropped; same transaction as the drop) and `held` (kept because of a legal hold).
-- Append-only like audit_log.
CREATE TABLE audit_retention_log (
    id             bigserial    PRIMARY KEY,
    run_id         uuid         NOT NULL,
    action         varchar(16)  NOT NULL CHECK (action IN ('detaching', 'dropped', 'held')),
    partition_name text         NOT NULL,
    range_from     timestamptz,
    range_to       timestamptz,
    retention_days integer,
    row_count      bigint,
    archive_path   text,
    manifest_path  text,
    archive_sha256 text,
    detail         text,
    recorded_at    timestamptz  NOT NULL DEFAULT now(),
    recorded_by    text         NOT NULL,
    db_user        text         NOT NULL DEFAULT current_user
);
CREATE INDEX audit_retention_log_partition_idx ON audit_retention_log (partition_name, recorded_at);

CREATE TRIGGER audit_retention_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_retention_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_retention_log_no_update_delete_stmt
    BEFORE UPDATE OR DELETE ON audit_retention_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_retention_log_no_truncate
    BEFORE TRUNCATE ON audit_retention_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Leaf hashes of rows removed by retention, so inclusion and consistency proofs of the integrity logs still
-- verify after the rows themselves are gone. organization_id NULL is the shared log, as in audit_log.
CREATE TABLE audit_log_pruned_leaves (
    organization_id varchar(255),
    seq             bigint       NOT NULL CHECK (seq >= 0),
    leaf_hash       bytea        NOT NULL CHECK (octet_length(leaf_hash) = 32),
    "timestamp"     timestamptz  NOT NULL,
    partition_name  text         NOT NULL,
    pruned_at       timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT audit_log_pruned_leaves_log_seq_key UNIQUE NULLS NOT DISTINCT (organization_id, seq)
);

CREATE TRIGGER audit_log_pruned_leaves_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log_pruned_leaves
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_pruned_leaves_no_update_delete_stmt
    BEFORE UPDATE OR DELETE ON audit_log_pruned_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_pruned_leaves_no_truncate
    BEFORE TRUNCATE ON audit_log_pruned_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
