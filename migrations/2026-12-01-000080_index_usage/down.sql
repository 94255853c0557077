DROP TABLE IF EXISTS audit_index_actions;
DROP TABLE IF EXISTS audit_index_usage_snapshots;
