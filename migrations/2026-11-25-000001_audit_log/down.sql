DROP TABLE IF EXISTS audit_verifications;
DROP TABLE IF EXISTS audit_checkpoints;
DROP TABLE IF EXISTS audit_log_heads;
DROP TABLE IF EXISTS audit_log;
DROP FUNCTION IF EXISTS audit_log_refuse_change();
DROP SEQUENCE IF EXISTS audit_log_id_seq;
