-- A move out of the shared schema and a purge run wholly as `tenant_router_app`, scoped to
-- the tenant. On Citus a transaction that changes rows as two roles deadlocks with itself:
-- each role has its own connections to the workers, and deleting the directory row (whose
-- foreign keys are checked on the workers) waits for the other role's uncommitted deletes.
-- So the app role may lock and delete its own directory row, and no other. The owner is not
-- bound (no FORCE): it registers tenants.
--
-- Each statement is EXECUTEd on its own: Citus passes some DDL on a reference table to the
-- workers as the query string it came in, and a whole migration file is one string.
DO $$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY ARRAY[
        'GRANT UPDATE (created_at), DELETE ON tenants TO tenant_router_app',
        'ALTER TABLE tenants ENABLE ROW LEVEL SECURITY',
        'CREATE POLICY directory_read ON tenants FOR SELECT
             TO tenant_router_app, tenant_router_apex USING (true)',
        'CREATE POLICY directory_lock_own ON tenants FOR UPDATE TO tenant_router_app
             USING (id = current_setting(''app.tenant_id'', true))',
        'CREATE POLICY directory_delete_own ON tenants FOR DELETE TO tenant_router_app
             USING (id = current_setting(''app.tenant_id'', true))'
    ] LOOP
        EXECUTE statement;
    END LOOP;
END $$;
