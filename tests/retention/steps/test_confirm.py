"""confirm's look at Heroku Connect's mirror (retention.steps.confirm), on the sandbox's real store: a mask of a
field the Connect mapping does not mirror (Contact's Phone, here) is checked in the org only, and the mirror check
compares the fields it has instead of failing on a column that is not there; a retry after the ledger row waits
for every job that row lists."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from retention.hooks.store import RetentionStoreHook
from retention.policy import parse_policy
from retention.steps.confirm import mirror_reflects

POLICY = b"""id: phone_mask
description: masks a field Connect does not mirror
owner: tests
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: CreatedDate
  older_than_days: 30
retain:
  table: phone_mask
  fields:
    Email: keep
action: mask
mask:
  FirstName: anonymize
  Phone: nullify
"""


def mirrored_contact(sandbox, sf, last_name: str, **fields) -> str:
    """A new contact, once Connect's mirror has it."""
    sfid = sf.Contact.create({"LastName": last_name, **fields})["id"]
    deadline = time.monotonic() + 60
    with sandbox.store_conn() as conn:
        while not conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (sfid,)).fetchone():
            assert time.monotonic() < deadline, "Heroku Connect did not sync the contact"
            time.sleep(0.5)
    return sfid


def test_the_mirror_check_compares_only_the_fields_connect_mirrors(sandbox, sf):
    import json

    from psycopg import sql

    from retention.cache import ensure_table
    from retention.steps.run import make_run

    first = "Unmirrored"
    sfid = mirrored_contact(sandbox, sf, "Phone mask", FirstName=first, Phone="+1 555 0100")
    with sandbox.store_conn() as conn:
        mirrored = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'salesforce' AND "
            "table_name = 'contact'").fetchall()}
    assert "phone" not in mirrored and "firstname" in mirrored  # the mapping this test relies on
    policy, store = parse_policy(POLICY, "phone_mask.yaml"), RetentionStoreHook()
    now = dt.datetime.now(dt.UTC)
    run = make_run(policy, logical_date=now, run_after=now, dag_run_id="mirror-check", params={}, started_at=now)
    ghost = "003000000000000AAA"  # reported done, never mirrored

    def reflects(sent: dict[str, dict], done: list[str]) -> bool:
        """The run's records ``done`` with ``sent`` values, as the act step leaves them, then the check."""
        with store.connect() as conn:
            ensure_table(conn, policy.retain.table, policy.retain.fields, {"Email": "email"})
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("cache", policy.retain.table)))
            for name, ddl in ((run.staging, "sfid varchar(18) PRIMARY KEY"),
                              (run.sent, "sfid varchar(18) PRIMARY KEY, sent jsonb NOT NULL")):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(name, sql.SQL(ddl)))
            for record in done:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(run.staging), (record,))
                conn.execute(sql.SQL(
                    "INSERT INTO {} (sfid, _retention_policy, _retention_run, _retained_at, _action, _action_status) "
                    "VALUES (%s, %s, %s, now(), 'mask', 'done')").format(
                    sql.Identifier("cache", policy.retain.table)), (record, policy.id, run.run_key))
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(run.sent),
                             (record, json.dumps(sent.get(record, {}))))
        return mirror_reflects(store, policy, run, [])

    try:
        assert reflects({sfid: {"FirstName": first, "Phone": None}}, [sfid])
        assert not reflects({sfid: {"FirstName": first + "x", "Phone": None}}, [sfid])
        assert reflects({sfid: {"Phone": None}}, [sfid])  # none mirrored: the row suffices
        assert not reflects({sfid: {"Phone": None}, ghost: {"Phone": None}}, [sfid, ghost])
    finally:
        with store.connect() as conn:
            for name in (run.staging, run.sent):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                sql.Identifier("cache", policy.retain.table)))


def test_a_retry_after_the_ledger_row_waits_for_the_jobs_that_row_took_over(sandbox, sf):
    """An execution settled a chunk's job, then died; the run was cleared. The next execution staged nothing of
    that chunk (the org no longer offered it) and its ledger row lists the job as its own. Its confirm's retry,
    after that row was written, still waits until Connect's mirror shows the chunk's records deleted."""
    from psycopg import sql

    from retention.cache import ensure_table
    from retention.steps.confirm import MirrorBehind, confirm, write_ledger
    from retention.steps.results import Extracted
    from retention.steps.run import make_run

    policy = parse_policy(POLICY.replace(b"phone_mask", b"retried_confirm").replace(b"action: mask", b"action: delete")
                          .split(b"\nmask:")[0] + b"\n", "retried_confirm.yaml")
    store, job = RetentionStoreHook(), "7501x0000000001AAA"
    sfid = mirrored_contact(sandbox, sf, "Settled by an earlier execution")
    now = dt.datetime.now(dt.UTC)
    run = make_run(policy, logical_date=now, run_after=now, dag_run_id="cleared-and-run-again", params={},
                   started_at=now)
    cache_table = sql.Identifier("cache", policy.retain.table)
    with store.connect() as conn:
        ensure_table(conn, policy.retain.table, policy.retain.fields, {"Email": "email"})
        conn.execute(sql.SQL("CREATE TABLE {} (sfid varchar(18) PRIMARY KEY)").format(run.staging))  # staged none
        conn.execute(sql.SQL(
            "INSERT INTO {} (sfid, _retention_policy, _retention_run, _retained_at, _action, _action_status, "
            "_bulk_job_id) VALUES (%s, %s, %s, now(), 'delete', 'done', %s)").format(cache_table),
            (sfid, policy.id, run.run_key, job))
    write_ledger(store, policy, run, counts={"acted": 1, "failed": 0}, bulk_job_ids=[job], holds_applied=[],
                 validation=None, status="succeeded", message="retried_confirm: 1 deleted", timings={})

    def retry() -> None:
        extracted = Extracted(run_key=run.run_key, cutoff=run.cutoff, eligible=0, held=0, done=1, staged=0)
        confirm(store, None, policy, run, extracted, None, None, [], mirror_timeout=0.5, poll_interval=0.1)

    def staged() -> bool:
        with store.connect() as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (run.staging.as_string(conn),)).fetchone()[0]

    try:
        with pytest.raises(MirrorBehind, match="1 deleted records"):  # the mirror still has the record
            retry()
        assert staged()  # kept for the next retry
        sf.Contact.delete(sfid)
        deadline = time.monotonic() + 60
        with sandbox.store_conn() as conn:
            while conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (sfid,)).fetchone():
                assert time.monotonic() < deadline, "Heroku Connect did not sync the delete"
                time.sleep(0.5)
        retry()
        assert not staged()
    finally:
        with store.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(run.staging))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(cache_table))
