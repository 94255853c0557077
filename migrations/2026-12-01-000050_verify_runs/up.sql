-- Every `verify` run and what it found, so that the service (and its `audit_db_verify_last_*` metrics and alerts)
-- knows the latest result even when verify runs elsewhere (a CronJob, an operator's shell). Append-only: a run's
-- record is evidence that tampering was (or was not) seen at that time.
CREATE TABLE audit_verify_runs (
    id           bigserial    PRIMARY KEY,
    started_at   timestamptz  NOT NULL,
    finished_at  timestamptz  NOT NULL,
    organization varchar(255),
    incremental  boolean      NOT NULL,
    logs         integer      NOT NULL CHECK (logs >= 0),
    leaves       bigint       NOT NULL CHECK (leaves >= 0),
    findings     integer      NOT NULL CHECK (findings >= 0),
    db_user      text         NOT NULL DEFAULT current_user
);
CREATE INDEX audit_verify_runs_finished_idx ON audit_verify_runs (finished_at);

CREATE TRIGGER audit_verify_runs_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_verify_runs
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_verify_runs_no_update_delete_stmt
    BEFORE UPDATE OR DELETE ON audit_verify_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_verify_runs_no_truncate
    BEFORE TRUNCATE ON audit_verify_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
