-- Back to a GIN maintained on every partition. PostgreSQL attaches a partition's existing equivalent index (the
-- ones sealing built) instead of building a second one, so this only builds it where a partition has none.
DROP TABLE audit_partition_seals;
CREATE INDEX audit_log_details_gin_idx ON audit_log USING gin (details jsonb_path_ops);
