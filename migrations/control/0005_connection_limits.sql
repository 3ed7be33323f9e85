-- Per-tenant overrides of the router's connection limits (issue 13): NULL takes the
-- router's default (TENANT_ROUTER_STATEMENT_TIMEOUT_MS, ..._IDLE_IN_TRANSACTION_TIMEOUT_MS).
ALTER TABLE tenants
    ADD COLUMN statement_timeout_ms integer
        CHECK (statement_timeout_ms BETWEEN 1 AND 3600000),
    ADD COLUMN idle_in_transaction_timeout_ms integer
        CHECK (idle_in_transaction_timeout_ms BETWEEN 1 AND 3600000);

-- A tenant's own request rate limit (a token bucket: `rate_limit_rps` per second, bursts of
-- `rate_limit_burst`); NULL takes the router's default (TENANT_ROUTER_RATE_LIMIT_RPS).
ALTER TABLE tenants
    ADD COLUMN rate_limit_rps integer CHECK (rate_limit_rps BETWEEN 1 AND 1000000),
    ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst BETWEEN 1 AND 1000000),
    ADD CONSTRAINT tenants_rate_limit_whole
        CHECK ((rate_limit_rps IS NULL) = (rate_limit_burst IS NULL));
