DROP TABLE IF EXISTS audit_log_pruned_leaves;
DROP TABLE IF EXISTS audit_retention_log;
DROP TABLE IF EXISTS audit_legal_holds;
DROP TABLE IF EXISTS audit_classification_retention;
DROP TABLE IF EXISTS audit_retention_policies;
DROP TABLE IF EXISTS audit_partition_config;
-- A hash/list strategy replaced audit_log's primary key by a unique index; put the key back (this fails, as it
-- should, while sub-partitioned partitions exist: drop them first).
DO $$
BEGIN
    IF to_regclass('audit_log') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'audit_log_pkey'
                       AND conrelid = 'audit_log'::regclass) THEN
        DROP INDEX IF EXISTS audit_log_event_key;
        ALTER TABLE audit_log ADD CONSTRAINT audit_log_pkey PRIMARY KEY (event_id, "timestamp");
    END IF;
END;
$$;
