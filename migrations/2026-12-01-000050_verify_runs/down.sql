DROP TABLE audit_verify_runs;
