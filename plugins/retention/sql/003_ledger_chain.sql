-- The ledger is tamper-evident: each row carries the hash of the row before it (a hash chain in id
-- order), so an edited, removed or inserted row breaks the chain at that point.
-- `python -m retention evidence verify` checks it.
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS prev_hash text;
ALTER TABLE retention.runs ADD COLUMN IF NOT EXISTS row_hash text;
