-- The ledger is protected by grants (the pipeline role may insert and read rows, never delete them: see
-- retention/store_setup.py) and, in depth, by this trigger: no role but the ledger's owner (the admin's
-- credential) changes or deletes a sealed row, even if a grant is widened by mistake. The owner is left able to,
-- as Postgres always lets an owner drop the trigger; the hash chain (`evidence verify`) shows what it did.
CREATE OR REPLACE FUNCTION retention.refuse_sealed_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.row_hash IS NOT NULL AND NOT pg_has_role(current_user,
            (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'ledger row % is sealed: % refused for role %', OLD.id, TG_OP, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE OR REPLACE TRIGGER runs_sealed BEFORE UPDATE OR DELETE ON retention.runs
    FOR EACH ROW EXECUTE FUNCTION retention.refuse_sealed_change();
