-- A move out of the shared schema closes the tenant here before its configuration switches
-- (`moving::Source::guard`): `moved_out` is set and committed, and every transaction of the
-- tenant that starts afterwards fails with 57P03 (a 503; the client's retry goes to the new
-- place once the switch is announced). Until the switch, nothing writes here; if the move
-- is killed in between, its retry lifts the flag in the transaction that locks the tenant
-- again.
--
-- Each statement is EXECUTEd on its own (see 0003).
DO $$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY ARRAY[
        'ALTER TABLE tenants ADD COLUMN moved_out boolean NOT NULL DEFAULT false',
        'GRANT UPDATE (moved_out) ON tenants TO tenant_router_app'
    ] LOOP
        EXECUTE statement;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tenant_router_enter(tenant text) RETURNS void
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7401105, hashtext(tenant));
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = tenant AND NOT moved_out) THEN
        RAISE EXCEPTION 'tenant % does not live in the shared schema (moved or removed); retry', tenant
            USING ERRCODE = '57P03';
    END IF;
END
$$;
