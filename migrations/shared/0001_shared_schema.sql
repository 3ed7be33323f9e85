-- The shared database (schema `shared`, on the search path): every shared tenant's rows, each tagged with its `tenant_id`. Every
-- primary key, unique index and foreign key includes `tenant_id`, which is what Citus needs
-- to distribute the tables by it (see `shared::citus_statements`, applied after this when
-- the citus extension is present).

-- The directory of shared tenants (a reference table on Citus).
CREATE TABLE tenants (
    id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    tenant_id     text NOT NULL REFERENCES tenants (id),
    id            bigint GENERATED ALWAYS AS IDENTITY,
    username      text NOT NULL,
    email         text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX users_username_key ON users (tenant_id, lower(username));
CREATE UNIQUE INDEX users_email_key ON users (tenant_id, lower(email));
-- Apex login looks a user up by email across tenants.
CREATE INDEX users_email_lookup ON users (lower(email));

CREATE TABLE sessions (
    tenant_id  text NOT NULL,
    token_hash bytea NOT NULL,
    user_id    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, token_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user_id ON sessions (tenant_id, user_id);

CREATE TABLE notes (
    tenant_id  text NOT NULL,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    user_id    bigint NOT NULL,
    content    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX notes_user_id_id ON notes (tenant_id, user_id, id DESC);

CREATE TABLE job_runs (
    tenant_id    text NOT NULL REFERENCES tenants (id),
    job_id       text NOT NULL,
    kind         text NOT NULL,
    result       jsonb,
    completed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, job_id)
);

-- Row-level security, the second line of defence behind the `tenant_id = $n` filter every
-- query carries: the app runs each transaction as `tenant_router_app` (which owns nothing)
-- with `app.tenant_id` set locally, so a query that forgets the filter sees only its own
-- tenant's rows. FORCE makes the policies bind the tables' owner too.
-- The roles are cluster-wide: another shared database on the same server may have made
-- them, concurrently even.
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

GRANT USAGE ON SCHEMA shared TO tenant_router_app, tenant_router_apex;
GRANT SELECT ON tenants TO tenant_router_app, tenant_router_apex;
GRANT SELECT, INSERT, UPDATE, DELETE ON users, sessions, notes, job_runs TO tenant_router_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA shared TO tenant_router_app;
-- The apex login reads users across tenants, and nothing else.
GRANT SELECT (tenant_id, id, email, password_hash) ON users TO tenant_router_apex;

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
ALTER TABLE job_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_runs FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON users TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_isolation ON sessions TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_isolation ON notes TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_isolation ON job_runs TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY apex_lookup ON users FOR SELECT TO tenant_router_apex USING (true);
