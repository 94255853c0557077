-- Refused while any key seals as `pd2`: dropping the column would make those keys seal as `pd1`, and their
-- subjects' equality tokens would no longer match what is stored.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_subject_keys WHERE value_format <> 1) THEN
        RAISE EXCEPTION 'subject keys with value_format 2 exist; the pd2 stored form cannot be reverted';
    END IF;
END $$;
ALTER TABLE audit_subject_keys DROP COLUMN value_format;
