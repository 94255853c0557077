-- audit_log: the append-only, time-partitioned event table, and the tables of its tamper-evident logs.
-- Partitions are not created here: audit-partition's PartitionManager creates them (at migrate time for the
-- current period and the ones ahead, and on demand for any other period an event arrives for).

CREATE SEQUENCE audit_log_id_seq AS bigint;

CREATE TABLE audit_log (
    id                   bigint        NOT NULL DEFAULT nextval('audit_log_id_seq'),
    event_id             uuid          NOT NULL,
    "timestamp"          timestamptz   NOT NULL,
    ingested_at          timestamptz   NOT NULL,
    action               varchar(255)  NOT NULL CHECK (action <> ''),
    status               varchar(16)   NOT NULL CHECK (status IN ('attempt', 'success', 'failure')),
    principal_id         varchar(255),
    organization_id      varchar(255)  CHECK (organization_id <> ''),
    target_resource_type varchar(255),
    target_resource_id   varchar(255),
    outcome_description  varchar(4096),
    correlation_id       varchar(255),
    data_classification  varchar(16)   NOT NULL DEFAULT 'INTERNAL'
        CHECK (data_classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI', 'FINANCIAL')),
    retention_policy     varchar(64)   NOT NULL DEFAULT 'standard',
    event_version        varchar(20)   NOT NULL DEFAULT '1.0',
    ttl                  varchar(64),
    processing_latency   integer       CHECK (processing_latency >= 0),
    details              jsonb         NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object'),
    -- Tamper evidence (docs/integrity.md): position in the organisation's log, and the RFC 6962 leaf hash of the
    -- row's canonical form.
    seq                  bigint        NOT NULL CHECK (seq >= 0),
    leaf_hash            bytea         NOT NULL CHECK (octet_length(leaf_hash) = 32),
    CONSTRAINT audit_log_pkey PRIMARY KEY (event_id, "timestamp")
) PARTITION BY RANGE ("timestamp");

COMMENT ON TABLE audit_log IS 'Append-only audit events; UPDATE, DELETE and TRUNCATE are refused by triggers.';

-- The seed's query patterns: tenant + time window; principal + action; action + outcome + time (e.g. failed logins
-- in the last hour: equality on action and status, then the time range in index order — measured by the bench);
-- details containment (jsonb_path_ops: smaller and faster than the default opclass, supports exactly @>);
-- and (organisation, seq) for the integrity log's ordered reads.
CREATE INDEX audit_log_org_ts_idx ON audit_log (organization_id, "timestamp");
CREATE INDEX audit_log_principal_action_idx ON audit_log (principal_id, action, "timestamp");
CREATE INDEX audit_log_action_status_ts_idx ON audit_log (action, status, "timestamp");
CREATE INDEX audit_log_log_seq_idx ON audit_log (organization_id, seq);
CREATE INDEX audit_log_details_gin_idx ON audit_log USING gin (details jsonb_path_ops);

-- Append-only: refuse UPDATE and DELETE on every partition (row triggers on the parent are cloned to each
-- partition) and TRUNCATE of the parent (PartitionManager adds the same statement trigger to every partition).
-- A superuser can still bypass triggers with session_replication_role = replica: that is what the signed Merkle
-- checkpoints detect.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = '42501',
              HINT = 'Audit events are never changed or deleted; retention drops whole partitions through audit-db partitions drop-expired.';
END;
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

-- Statement-level too, so that even a statement touching no row is refused on the parent.
CREATE TRIGGER audit_log_no_update_delete_stmt
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- One append-only log per organisation ('' is the shared log of events without one). `size` is the next
-- sequence number; it is advanced in the same transaction that stores the events, under the row lock, so
-- sequence numbers are gap-free and unique across concurrent writers.
CREATE TABLE audit_log_heads (
    log_id varchar(255) PRIMARY KEY,
    size   bigint       NOT NULL DEFAULT 0 CHECK (size >= 0)
);

-- Signed checkpoints (tree heads). Append-only like the events.
CREATE TABLE audit_checkpoints (
    id          bigserial    PRIMARY KEY,
    log_id      varchar(255) NOT NULL,
    tree_size   bigint       NOT NULL CHECK (tree_size >= 0),
    root_hash   bytea        NOT NULL CHECK (octet_length(root_hash) = 32),
    created_at  timestamptz  NOT NULL,
    key_id      text         NOT NULL,
    signature   bytea        NOT NULL,
    note        text         NOT NULL,
    -- The compact range (right-edge subtree roots) at tree_size, so the next checkpoint only reads new leaves.
    -- Not signed: it is re-derived and checked by verify.
    frontier    bytea        NOT NULL
);
CREATE INDEX audit_checkpoints_log_size_idx ON audit_checkpoints (log_id, tree_size);

CREATE TRIGGER audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_checkpoints_no_update_delete_stmt
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Where `audit-db verify --incremental` can start: the last checkpoint of each log that a full check found clean.
-- Advisory state, not evidence (an attacker who edits it only makes the next verify check more, never less: the
-- starting point is re-checked against the signed checkpoint it names).
CREATE TABLE audit_verifications (
    id          bigserial    PRIMARY KEY,
    log_id      varchar(255) NOT NULL,
    tree_size   bigint       NOT NULL,
    root_hash   bytea        NOT NULL,
    verified_at timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX audit_verifications_log_idx ON audit_verifications (log_id, tree_size);
