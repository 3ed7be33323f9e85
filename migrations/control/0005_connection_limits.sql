-- Per-tenant overrides of the router's connection limits (issue 13): NULL takes the
-- router's default (TENANT_ROUTER_STATEMENT_TIMEOUT_MS, ..._IDLE_IN_TRANSACTION_TIMEOUT_MS).
ALTER TABLE tenants
    ADD COLUMN statement_timeout_ms integer
        CHECK (statement_timeout_ms BETWEEN 1 AND 3600000),
    ADD COLUMN idle_in_transaction_timeout_ms integer
        CHECK (idle_in_transaction_timeout_ms BETWEEN 1 AND 3600000);
