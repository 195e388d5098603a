"""confirm's look at Heroku Connect's mirror (retention.steps.confirm), on the sandbox's real store: a mask of a
field the Connect mapping does not mirror (Contact's Phone, here) is checked in the org only, and the mirror check
compares the fields it has instead of failing on a column that is not there."""

from __future__ import annotations

import time

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


def test_the_mirror_check_compares_only_the_fields_connect_mirrors(sandbox, sf):
    import datetime as dt
    import json

    from psycopg import sql

    from retention.cache import ensure_table
    from retention.steps.run import make_run

    first = "Unmirrored"
    sfid = sf.Contact.create({"FirstName": first, "LastName": "Phone mask", "Phone": "+1 555 0100"})["id"]
    deadline = time.monotonic() + 60
    with sandbox.store_conn() as conn:
        mirrored = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'salesforce' AND "
            "table_name = 'contact'").fetchall()}
        while not conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (sfid,)).fetchone():
            assert time.monotonic() < deadline, "Heroku Connect did not sync the contact"
            time.sleep(0.5)
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
