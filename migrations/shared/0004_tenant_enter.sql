-- The first statement of every shared tenant's transaction (`shared::TenantDb::begin`):
-- it takes the tenant's lock shared, so a move or purge (which takes it exclusively) waits
-- for the transactions under way and holds back new ones; then it makes sure the tenant
-- still lives here. A transaction that waited out a move finds the directory row gone and
-- fails with 57P03, a 503 for the client, whose retry goes to the new place. (The lock's
-- keys are `shared::TENANT_LOCK_CLASS` and the tenant's hash.)
CREATE FUNCTION tenant_router_enter(tenant text) RETURNS void
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7401105, hashtext(tenant));
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = tenant) THEN
        RAISE EXCEPTION 'tenant % does not live in the shared schema (moved or removed); retry', tenant
            USING ERRCODE = '57P03';
    END IF;
END
$$;
