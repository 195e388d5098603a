-- The run of each policy that is at work now: one row per policy, claimed by a DAG run's extract and released
-- by its confirm_and_report (or taken over once Airflow says the holder's DAG run is no longer running). Two runs
-- of one policy never work at once, even when a backfill starts several DAG runs together.
CREATE TABLE IF NOT EXISTS retention.active_runs (
    policy_id   text PRIMARY KEY,
    run_key     text NOT NULL,
    dag_run_id  text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
