-- A tenant's lifecycle (issue 12).

-- An incarnation: an id removed and created again names a new tenant, with a new
-- incarnation. Jobs carry the incarnation they were submitted for; the worker runs a job
-- only while its tenant is still that incarnation. Adopting kept data takes its incarnation
-- back.
CREATE SEQUENCE tenant_incarnation_seq;
ALTER TABLE tenants ADD COLUMN incarnation bigint;
UPDATE tenants SET incarnation = nextval('tenant_incarnation_seq');
ALTER TABLE tenants
    ALTER COLUMN incarnation SET NOT NULL,
    ALTER COLUMN incarnation SET DEFAULT nextval('tenant_incarnation_seq');

-- A random token per write, and a history of them by version, so an instance can tell that
-- the change it applied last is still the one the control database holds at that version.
-- After a restore to an earlier state, versions are drawn again and the same number names
-- another write: the instance sees another token and reloads in full.
ALTER TABLE tenants ADD COLUMN change_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE tenant_tombstones ADD COLUMN change_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE tenant_tombstones ADD COLUMN incarnation bigint;

CREATE TABLE tenant_history (
    version   bigint PRIMARY KEY,
    change_id uuid NOT NULL
);

INSERT INTO tenant_history (version, change_id)
    SELECT version, change_id FROM tenants
    UNION ALL SELECT version, change_id FROM tenant_tombstones;

CREATE FUNCTION tenant_history_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_history (version, change_id) VALUES (NEW.version, NEW.change_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_history AFTER INSERT OR UPDATE OF version ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenant_history_record();
CREATE TRIGGER tenant_tombstones_history AFTER INSERT ON tenant_tombstones
    FOR EACH ROW EXECUTE FUNCTION tenant_history_record();

-- What a removal kept: the data of a removed incarnation (its database, or its rows in the
-- shared schema, its Redis keys and files). While it is here the id cannot be created again,
-- except by adopting it; discarding it deletes the data. One per id: a create refuses while
-- one exists.
CREATE TABLE tenant_leftovers (
    tenant_id       text PRIMARY KEY,
    incarnation     bigint NOT NULL,
    isolation       text NOT NULL CHECK (isolation IN ('dedicated', 'shared')),
    database_url    text NOT NULL,
    provisioned     boolean NOT NULL,
    removed_version bigint NOT NULL,
    removed_at      timestamptz NOT NULL DEFAULT now()
);

-- The journal of operations that take more than one transaction (create, move, remove,
-- isolate). A row without `finished_at` whose tenant's operation lock is free is an
-- interrupted operation: reported at start-up, in the admin API, by `tenants doctor`, and
-- resumed or rolled back by retrying it or by `tenants repair`.
CREATE TABLE tenant_operations (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    step        text NOT NULL,
    -- Where the operation works; no credentials (database names and isolations only).
    detail      jsonb NOT NULL DEFAULT '{}',
    -- A source or target database the operation must find again (credentials; never shown).
    database_url text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text
);

CREATE UNIQUE INDEX tenant_operations_open ON tenant_operations (tenant_id)
    WHERE finished_at IS NULL;

-- Settings every writer must agree on, whatever its own configuration: `base_domain`, whose
-- wildcard hosts (`<id>.<base_domain>`) no other tenant may claim. `serve` records its own
-- here at start-up; a writer configured without one (a CLI, say) uses this one.
CREATE TABLE control_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
