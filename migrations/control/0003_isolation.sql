-- Where a tenant's rows live: its own database ('dedicated') or the shared database, tagged
-- with its id ('shared').
ALTER TABLE tenants
    ADD COLUMN isolation text NOT NULL DEFAULT 'dedicated'
        CHECK (isolation IN ('dedicated', 'shared'));
