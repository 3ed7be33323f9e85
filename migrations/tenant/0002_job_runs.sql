-- One row per background job whose effect committed, written in the same transaction as the
-- effect (see `JobContext::once`), so a redelivered job never applies its effect twice.
CREATE TABLE job_runs (
    job_id       text PRIMARY KEY,
    kind         text NOT NULL,
    result       jsonb,
    completed_at timestamptz NOT NULL DEFAULT now()
);
