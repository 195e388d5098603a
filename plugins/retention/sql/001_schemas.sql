-- The retention store's own schemas, beside Heroku Connect's `salesforce` schema (which is read-only
-- to us: a plain write there would be pushed to Salesforce).
--   cache              the retained subsets, one table per policy's retain.table
--   retention          the run ledger (the evidence of every run)
--   retention_staging  run-scoped working tables, dropped after a successful run
CREATE SCHEMA IF NOT EXISTS cache;
CREATE SCHEMA IF NOT EXISTS retention;
CREATE SCHEMA IF NOT EXISTS retention_staging;

-- Who may do what in them (the pipeline role, the analysts' read-only role) is granted by
-- `python -m retention store-setup` (retention/store_setup.py), run by an admin, never by a task.
