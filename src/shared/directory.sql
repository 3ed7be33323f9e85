-- The router's own objects in the shared schema, after the app's migrations: the tenant
-- directory, what the app role may do to it, and `tenant_router_enter`, the first statement
-- of every shared tenant's transaction. Idempotent: each piece is made only when missing, so
-- a schema whose migrations made them (the reference app's, from before the app described
-- its own schema) is left as it is.
--
-- Each statement is EXECUTEd on its own: Citus passes some DDL on a reference table to the
-- workers as the query string it came in, and this whole text is one string.
DO $directory$
BEGIN
    IF to_regclass('tenants') IS NULL THEN
        EXECUTE $s$CREATE TABLE tenants (
            id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
            created_at timestamptz NOT NULL DEFAULT now(),
            moved_out  boolean NOT NULL DEFAULT false
        )$s$;
    END IF;
    IF NOT has_schema_privilege('tenant_router_app', current_schema(), 'USAGE') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO tenant_router_app', current_schema());
    END IF;
    IF NOT has_schema_privilege('tenant_router_apex', current_schema(), 'USAGE') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO tenant_router_apex', current_schema());
    END IF;
    IF NOT has_table_privilege('tenant_router_app', 'tenants', 'SELECT')
       OR NOT has_table_privilege('tenant_router_apex', 'tenants', 'SELECT') THEN
        EXECUTE 'GRANT SELECT ON tenants TO tenant_router_app, tenant_router_apex';
    END IF;
    IF NOT has_table_privilege('tenant_router_app', 'tenants', 'DELETE') THEN
        EXECUTE 'GRANT DELETE ON tenants TO tenant_router_app';
    END IF;
    IF NOT has_column_privilege('tenant_router_app', 'tenants', 'created_at', 'UPDATE')
       OR NOT has_column_privilege('tenant_router_app', 'tenants', 'moved_out', 'UPDATE') THEN
        EXECUTE 'GRANT UPDATE (created_at, moved_out) ON tenants TO tenant_router_app';
    END IF;
    -- The app role may lock, close and delete its own directory row, and no other. The
    -- owner is not bound (no FORCE): it registers tenants.
    IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = 'tenants'::regclass) THEN
        EXECUTE 'ALTER TABLE tenants ENABLE ROW LEVEL SECURITY';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = current_schema()
                   AND tablename = 'tenants' AND policyname = 'directory_read') THEN
        EXECUTE 'CREATE POLICY directory_read ON tenants FOR SELECT
                     TO tenant_router_app, tenant_router_apex USING (true)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = current_schema()
                   AND tablename = 'tenants' AND policyname = 'directory_lock_own') THEN
        EXECUTE $s$CREATE POLICY directory_lock_own ON tenants FOR UPDATE TO tenant_router_app
                     USING (id = current_setting('app.tenant_id', true))$s$;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = current_schema()
                   AND tablename = 'tenants' AND policyname = 'directory_delete_own') THEN
        EXECUTE $s$CREATE POLICY directory_delete_own ON tenants FOR DELETE TO tenant_router_app
                     USING (id = current_setting('app.tenant_id', true))$s$;
    END IF;
    -- Takes the tenant's lock shared, so a move or purge (which takes it exclusively) waits
    -- for the transactions under way and holds back new ones; then makes sure the tenant
    -- still lives here and is not closed by a move (57P03: a 503, whose retry goes to the
    -- new place). The lock's keys are `shared::TENANT_LOCK_CLASS` and the tenant's hash.
    IF to_regprocedure('tenant_router_enter(text)') IS NULL THEN
        EXECUTE $s$CREATE FUNCTION tenant_router_enter(tenant text) RETURNS void
            LANGUAGE plpgsql
            SET search_path FROM CURRENT
        AS $f$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(7401105, hashtext(tenant));
            IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = tenant AND NOT moved_out) THEN
                RAISE EXCEPTION 'tenant % does not live in the shared schema (moved or removed); retry', tenant
                    USING ERRCODE = '57P03';
            END IF;
        END
        $f$$s$;
    END IF;
END $directory$;
