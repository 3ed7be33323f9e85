-- Deletions leave a tombstone carrying a version from the same global sequence, so an
-- instance catching up with "everything after version N" learns of removals too.
CREATE TABLE tenant_tombstones (
    version    bigint PRIMARY KEY DEFAULT nextval('tenant_version_seq'),
    tenant_id  text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenant_tombstones_tenant_id ON tenant_tombstones (tenant_id);
