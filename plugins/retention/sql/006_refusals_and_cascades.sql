-- Records Salesforce refused for good (`refused`: a converted lead, a record in use by another), parents a run
-- kept back because a delete would also take children the policy does not retain (`blocked`, with the reason
-- per record), and the counts of the children a cascade policy retained and deleted with their parents.
-- NULL in rows written before these columns existed; the hash chain covers them only when set.
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS refused integer;
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS blocked integer;
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS blocked_records jsonb;
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS cascade jsonb;
