-- The retention store's own schemas, beside Heroku Connect's `salesforce` schema (which is read-only
-- to us: a plain write there would be pushed to Salesforce).
--   cache              the retained subsets, one table per policy's retain.table
--   retention          the run ledger (the evidence of every run)
--   retention_staging  run-scoped working tables, dropped after a successful run
CREATE SCHEMA IF NOT EXISTS cache;
CREATE SCHEMA IF NOT EXISTS retention;
CREATE SCHEMA IF NOT EXISTS retention_staging;

-- Analysts read the retained data and nothing else. Their role is a Heroku Postgres credential an admin makes
-- once (`heroku pg:credentials:create --name retention_analyst`; not on Essential plans): the default credential
-- the pipeline uses cannot create roles, so this only grants, and only when the credential exists.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'retention_analyst') THEN
        GRANT USAGE ON SCHEMA cache TO retention_analyst;
        GRANT SELECT ON ALL TABLES IN SCHEMA cache TO retention_analyst;
        ALTER DEFAULT PRIVILEGES IN SCHEMA cache GRANT SELECT ON TABLES TO retention_analyst;
        REVOKE ALL ON SCHEMA retention, retention_staging FROM retention_analyst;
    END IF;
END $$;
