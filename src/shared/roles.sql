-- The roles shared-tenant transactions switch to (cluster-wide, so another shared database
-- on the same server may have made them, concurrently even). Run before the app's shared
-- migrations, which grant their tables to them.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['tenant_router_app', 'tenant_router_apex'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
        IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
            EXECUTE format('GRANT %I TO %I', r, current_user);
        END IF;
    END LOOP;
END $$;
