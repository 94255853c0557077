-- Index layout (issue 14): the GIN index on `details` is no longer maintained row by row on every partition.
-- It roughly doubled the CPU and WAL of every insert (≈ 1 KB of WAL per event); it is now built once per partition
-- when the partition manager seals it (the partition's period is over, so it is no longer written): CREATE INDEX
-- CONCURRENTLY on each leaf, then VACUUM (FREEZE, ANALYZE). Queries on the partition still being written filter
-- `details` after the (organization_id, "timestamp") index; sealed partitions answer containment from the GIN.
--
-- Proofs are untouched: no row is rewritten (seq and leaf_hash stay as they are), only an index is dropped.
-- Dropping the partitioned index drops its per-partition children; `audit-db migrate` (App::migrate) seals every
-- partition whose period has ended right after this migration, which builds the GIN back on those partitions
-- (concurrently, without blocking writers).
--
-- The primary key keeps its name and columns (event_id, "timestamp"): lookups by event_id alone (`get`,
-- inclusion proofs) need an index that leads with event_id, and ids the library generates are UUIDv7, so they
-- already insert at the right edge of that index (docs/benchmarks.md has the measurements behind the choice).
DROP INDEX IF EXISTS audit_log_details_gin_idx;

-- Which partitions the manager has sealed, and what it cost. State, not evidence: a missing row only means the
-- next maintenance seals the partition again (every step is idempotent).
CREATE TABLE audit_partition_seals (
    partition_name text         PRIMARY KEY,
    sealed_at      timestamptz  NOT NULL DEFAULT now(),
    row_count      bigint       NOT NULL CHECK (row_count >= 0),
    seconds        float8       NOT NULL CHECK (seconds >= 0),
    indexes        text[]       NOT NULL,
    sealed_by      text         NOT NULL
);
