-- One data-access path for dedicated and shared tenants: every table carries `tenant_id`,
-- and every query filters on it. In a dedicated database every row is the database's own
-- tenant's, and carries '' (see `Tenant::scope`); in the shared database it carries the id.
ALTER TABLE users ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE notes ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE job_runs ADD COLUMN tenant_id text NOT NULL DEFAULT '';
