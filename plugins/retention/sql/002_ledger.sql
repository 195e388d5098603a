-- One row per attempt of a policy run: what was decided, on which policy version, with what result.
-- Rows are appended, never updated after the run finishes, so the table reads as an audit trail.
CREATE TABLE IF NOT EXISTS retention.runs (
    id              bigserial PRIMARY KEY,
    policy_id       text        NOT NULL,
    run_key         text        NOT NULL,   -- policy id + logical date: the retention decision
    dag_run_id      text        NOT NULL,
    policy_hash     text        NOT NULL,   -- sha256 of the policy file that ran
    object          text        NOT NULL,
    action          text        NOT NULL,
    source          text        NOT NULL,
    cutoff          timestamptz NOT NULL,
    dry_run         boolean     NOT NULL DEFAULT false,
    eligible        integer,
    held            integer,
    staged          integer,
    retained        integer,
    acted           integer,
    failed          integer,
    salesforce_count integer,
    bulk_job_ids    jsonb       NOT NULL DEFAULT '[]',
    holds_applied   jsonb       NOT NULL DEFAULT '[]',
    validation      jsonb,
    status          text        NOT NULL,   -- succeeded | partially_failed | failed | dry_run
    message         text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    timings         jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_policy_cutoff ON retention.runs (policy_id, cutoff);
CREATE INDEX IF NOT EXISTS runs_run_key ON retention.runs (run_key);
