-- Views for Salesforce External Objects, one per policy (retention/external_views.py), in a schema of their own:
-- Heroku External Objects offers any table or view over OData, and Privacy Center says to offer only the cache's
-- retained subsets. The pipeline makes the views; store-setup grants the views role (retention_external) to read
-- them and nothing else.
CREATE SCHEMA IF NOT EXISTS retention_external;
