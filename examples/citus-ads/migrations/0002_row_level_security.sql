-- Requests read through tenant-router's tenant data path: a transaction as
-- `tenant_router_app` with `app.tenant_id` = 'company-<id>' set locally (see the library's
-- `shared` module). Row-level security keeps each company to its own rows, on every Citus
-- node. The policy compares text, so only the canonical id matches (`company-01` is not
-- company 1) and no id can make a cast fail. Not FORCEd: the owner loads the CSV files with
-- COPY, which row-level security refuses; `tenant_router_app` owns nothing, so the policies
-- bind it regardless.
--
-- Each statement is EXECUTEd on its own: Citus passes some DDL on distributed tables to the
-- workers as the query string it came in, and a whole migration file is one string.
DO $$
DECLARE
    t text;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA citus_ads TO tenant_router_app';
    FOREACH t IN ARRAY ARRAY['companies', 'campaigns', 'ads'] LOOP
        EXECUTE format('GRANT SELECT ON %I TO tenant_router_app', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY own_company ON %I TO tenant_router_app
                 USING (''company-'' || %I::text = current_setting(''app.tenant_id'', true))',
            t, CASE t WHEN 'companies' THEN 'id' ELSE 'company_id' END);
    END LOOP;
END $$;
