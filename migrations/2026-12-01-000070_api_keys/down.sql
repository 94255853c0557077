DROP TABLE audit_api_keys;
