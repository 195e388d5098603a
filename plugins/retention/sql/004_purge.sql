-- Store purge (retain.keep_days): the retained copies a policy keeps only for a while.

-- Privacy holds as the org has them, refreshed from Salesforce before every purge, so that no retained
-- copy of a held record is purged even when the record itself is gone from the org. `mirrored_at` of
-- the refresh is kept in holds_mirror; a purge refuses to run on a stale mirror.
CREATE TABLE IF NOT EXISTS retention.privacy_holds (
    hold_id     varchar(18) PRIMARY KEY,
    record_id   varchar(18) NOT NULL,
    is_active   boolean     NOT NULL,
    start_date  date,
    end_date    date
);
CREATE INDEX IF NOT EXISTS privacy_holds_record ON retention.privacy_holds (record_id);
CREATE TABLE IF NOT EXISTS retention.holds_mirror (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    mirrored_at timestamptz NOT NULL,
    holds       integer     NOT NULL
);

-- Every purged cache row, tied to the ledger row of the purge that removed it (whose hash chain covers
-- a digest of these ids). A record purged after its action was done is never retained again: for a
-- masked record that would overwrite nothing, but retain the masked values and mask them once more.
CREATE TABLE IF NOT EXISTS retention.purged_records (
    ledger_id     bigint      NOT NULL REFERENCES retention.runs (id),
    policy_id     text        NOT NULL,
    sfid          varchar(18) NOT NULL,
    action_status text        NOT NULL,
    retained_at   timestamptz NOT NULL,
    PRIMARY KEY (ledger_id, sfid)
);
CREATE INDEX IF NOT EXISTS purged_records_policy_sfid ON retention.purged_records (policy_id, sfid);
