-- Index usage history (audit-index, docs/indexes.md). PostgreSQL keeps index scan counters per partition index,
-- in memory, until a statistics reset or a crash: "unused for unusedThresholdDays" needs our own history. Each
-- analysis stores the cumulative counters of every partition index of every audit_log index; a counter that went
-- down between two snapshots is a reset (its new value is all new use), a partition index seen for the first time
-- contributes its whole counter.
CREATE TABLE audit_index_usage_snapshots (
    taken_at     timestamptz NOT NULL,
    -- The audit_log (parent) index and the partition index the counters belong to.
    index_name   text        NOT NULL,
    leaf_index   text        NOT NULL,
    idx_scan     bigint      NOT NULL CHECK (idx_scan >= 0),
    idx_tup_read bigint      NOT NULL CHECK (idx_tup_read >= 0),
    size_bytes   bigint      NOT NULL CHECK (size_bytes >= 0),
    PRIMARY KEY (index_name, leaf_index, taken_at)
);
CREATE INDEX audit_index_usage_snapshots_taken_idx ON audit_index_usage_snapshots (taken_at);

-- What the index manager did (create, attach, drop, cleanup), for the operator and for audits of the auditor.
CREATE TABLE audit_index_actions (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    index_name  text        NOT NULL,
    action      text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
