-- The store's copy of privacy holds follows PrivacyHold's documented fields (Object Reference, API 59.0):
-- the hold's RegisteredDate ("the date the Privacy Hold was added to the record"); PrivacyHold has no
-- StartDate, which an earlier version of this table copied.
ALTER TABLE retention.privacy_holds ADD COLUMN IF NOT EXISTS registered_date date;
ALTER TABLE retention.privacy_holds DROP COLUMN IF EXISTS start_date;
