-- Narrowing back fails if an encrypted value is stored (PostgreSQL refuses to truncate): that is intended.
ALTER TABLE audit_log ALTER COLUMN target_resource_id TYPE varchar(255);
ALTER TABLE audit_log ALTER COLUMN principal_id TYPE varchar(255);
DROP TABLE audit_subject_keys;
