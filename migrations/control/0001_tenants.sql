-- The control database: the source of truth for which tenants exist and where their data is.

-- One global sequence, so every change to any tenant gets a version greater than every
-- change before it. Instances compare versions to apply only what is newer.
CREATE SEQUENCE tenant_version_seq;

CREATE TABLE tenants (
    id                text PRIMARY KEY
                      CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    database_url      text NOT NULL,
    max_connections   integer NOT NULL DEFAULT 5 CHECK (max_connections BETWEEN 1 AND 1000),
    idle_timeout_secs integer NOT NULL DEFAULT 300 CHECK (idle_timeout_secs BETWEEN 1 AND 86400),
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
    -- True when the router created the database, so only then may it drop it.
    provisioned       boolean NOT NULL DEFAULT false,
    version           bigint NOT NULL DEFAULT nextval('tenant_version_seq'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX tenants_version_key ON tenants (version);

-- A host belongs to exactly one tenant: the primary key makes a second claim fail.
CREATE TABLE tenant_hosts (
    host      text PRIMARY KEY CHECK (host = lower(host)),
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);

CREATE INDEX tenant_hosts_tenant_id ON tenant_hosts (tenant_id);
