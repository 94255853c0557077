DROP TABLE audit_subject_index_key;
