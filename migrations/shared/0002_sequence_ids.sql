-- Row ids from plain sequences instead of identity columns: Citus cannot distribute a table
-- with an identity column. The sequences keep the identity columns' names and go on from
-- the highest id.
--
-- On Citus, an earlier version left `users` and `notes` as Citus *local* tables (their
-- foreign keys to the reference table `tenants` made them so), where Citus refuses
-- `DROP IDENTITY`. There it is dropped on each node's copy of the table directly (the
-- shards never had it); `shared::SharedDb::prepare` then distributes the tables.
DO $$
DECLARE
    citus_local boolean := false;
    failed text;
BEGIN
    -- Dynamic: without Citus the catalog table does not exist to be planned against.
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                                WHERE logicalrelid IN (''users''::regclass, ''notes''::regclass))'
            INTO citus_local;
    END IF;
    IF citus_local THEN
        SET LOCAL citus.enable_ddl_propagation = off;
        ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS;
        ALTER TABLE notes ALTER COLUMN id DROP IDENTITY IF EXISTS;
        -- Idempotent, so a retry after a failure here is safe.
        SELECT string_agg(format('%s:%s: %s', nodename, nodeport, result), '; ') INTO failed
        FROM run_command_on_workers(format(
            'SET citus.enable_ddl_propagation TO off; '
            'ALTER TABLE %1$I.users ALTER COLUMN id DROP IDENTITY IF EXISTS; '
            'ALTER TABLE %1$I.notes ALTER COLUMN id DROP IDENTITY IF EXISTS',
            current_schema()))
        WHERE NOT success;
        IF failed IS NOT NULL THEN
            RAISE EXCEPTION 'dropping the identity columns on the workers failed: %', failed;
        END IF;
        SET LOCAL citus.enable_ddl_propagation = on;
    ELSE
        ALTER TABLE users ALTER COLUMN id DROP IDENTITY;
        ALTER TABLE notes ALTER COLUMN id DROP IDENTITY;
    END IF;
END $$;

CREATE SEQUENCE users_id_seq AS bigint;
ALTER TABLE users ALTER COLUMN id SET DEFAULT nextval('users_id_seq');
SELECT setval('users_id_seq', coalesce(max(id), 0) + 1, false) FROM users;
CREATE SEQUENCE notes_id_seq AS bigint;
ALTER TABLE notes ALTER COLUMN id SET DEFAULT nextval('notes_id_seq');
SELECT setval('notes_id_seq', coalesce(max(id), 0) + 1, false) FROM notes;
GRANT USAGE ON SEQUENCE users_id_seq, notes_id_seq TO tenant_router_app;
