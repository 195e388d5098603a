-- The retention store's own schemas, beside Heroku Connect's `salesforce` schema (which is read-only
-- to us: a plain write there would be pushed to Salesforce).
--   cache              the retained subsets, one table per policy's retain.table
--   retention          the run ledger (the evidence of every run)
--   retention_staging  run-scoped working tables, dropped after a successful run
CREATE SCHEMA IF NOT EXISTS cache;
CREATE SCHEMA IF NOT EXISTS retention;
CREATE SCHEMA IF NOT EXISTS retention_staging;

-- Analysts read the retained data and nothing else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'retention_analyst') THEN
        CREATE ROLE retention_analyst NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA cache TO retention_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA cache TO retention_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA cache GRANT SELECT ON TABLES TO retention_analyst;
REVOKE ALL ON SCHEMA retention, retention_staging FROM retention_analyst;
