"""load's write into the cache (retention.cache.upsert_retained), on the sandbox's real store: new records are
copied in through a second connection (COPY) and records already cached are updated in place, with exactly the rows
the one-statement path (INSERT ... SELECT) writes; a settled record keeps its row."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from retention.cache import ensure_table, upsert_retained
from retention.hooks.store import RetentionStoreHook
from retention.policy import parse_policy
from retention.steps.run import make_run

POLICY = b"""id: load_paths
description: load's two ways into the cache
owner: tests
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: CreatedDate
  older_than_days: 30
retain:
  table: load_paths
  fields:
    Email: keep
    LastName: keep
action: delete
"""
SUBSET = sql.Identifier("retention_staging", "load_paths__subset")
CACHE = sql.Identifier("cache", "load_paths")


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"003{i:012d}AAA" for i in range(start, start + n)]


@pytest.mark.parametrize("by_copy", [True, False], ids=["copy", "insert"])
def test_new_records_are_written_cached_ones_updated_and_settled_ones_kept(sandbox, by_copy):
    policy, store = parse_policy(POLICY, "load_paths.yaml"), RetentionStoreHook()
    now = dt.datetime.now(dt.UTC)
    run = make_run(policy, logical_date=now, run_after=now, dag_run_id="load-paths", params={}, started_at=now)
    earlier, settled, new = _ids(3), _ids(2, 100), _ids(1200, 1000)  # new: more than one COPY block
    with store.connect() as conn:
        ensure_table(conn, policy.retain.table, policy.retain.fields, {"Email": "email", "LastName": "string"})
        conn.execute(sql.SQL("DELETE FROM {}").format(CACHE))
        for sfid in earlier + settled:  # an earlier run's rows: three pending, two already deleted
            conn.execute(sql.SQL(
                "INSERT INTO {} (sfid, email, lastname, _retention_policy, _retention_run, _retained_at, _action, "
                "_action_status, _bulk_job_id) VALUES (%s, 'old@example.com', 'Old', 'load_paths', 'earlier', "
                "now(), 'delete', %s, %s)").format(CACHE),
                (sfid, "done" if sfid in settled else "pending", "750000000000001AAA" if sfid in settled else None))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(SUBSET))
        conn.execute(sql.SQL("CREATE TABLE {} (sfid varchar(18) NOT NULL, email text, lastname text)").format(SUBSET))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(SUBSET)) as copy:
            for n, sfid in enumerate(earlier + settled + new):
                copy.write_row([sfid, f"p{n}@example.com" if n % 7 else None, f"Name\t{n}\\ \u00e9"])
    try:
        with store.connect() as conn, store.connect() as reader:
            written = upsert_retained(conn, policy.retain.table, ["Email", "LastName"], SUBSET, policy, run,
                                      reader=reader if by_copy else None)
        with store.connect() as conn:
            rows = {r[0]: r[1:] for r in conn.execute(sql.SQL(
                "SELECT sfid, email, lastname, _retention_policy, _retention_run, _action, _action_status, "
                "_bulk_job_id FROM {}").format(CACHE)).fetchall()}
    finally:
        with store.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(SUBSET))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(CACHE))
    assert written == len(earlier) + len(new)
    assert len(rows) == len(earlier) + len(settled) + len(new)
    for n, sfid in enumerate(earlier + settled + new):
        if sfid in settled:  # its retained copy is the original: untouched
            assert rows[sfid] == ("old@example.com", "Old", "load_paths", "earlier", "delete", "done",
                                  "750000000000001AAA")
        else:  # text with a tab, a backslash and a non-ASCII letter, and NULLs, come through as they were
            assert rows[sfid] == (f"p{n}@example.com" if n % 7 else None, f"Name\t{n}\\ \u00e9", "load_paths",
                                  run.run_key, "delete", "pending", None), sfid
