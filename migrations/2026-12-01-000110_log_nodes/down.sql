DROP TABLE audit_log_nodes;
