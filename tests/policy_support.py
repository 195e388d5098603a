"""Helpers shared by the policy-run test modules: reading the org and the store as dicts, the DAGs."""

from __future__ import annotations

HASH_KEY = "test-hash-key-0123456789abcdef"
ACTIVE_HOLDS = """SELECT recordid FROM org.privacyhold WHERE NOT isdeleted AND isactive
                  AND (enddate IS NULL OR enddate >= (now() AT TIME ZONE 'UTC')::date)"""


def _dicts(conn, query: str, params=()) -> list[dict]:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def org_rows(sandbox, query: str, params=()) -> list[dict]:
    with sandbox.org_conn() as conn:
        return _dicts(conn, query, params)


def store_rows(sandbox, query: str, params=()) -> list[dict]:
    with sandbox.store_conn() as conn:
        return _dicts(conn, query, params)


def cache_rows(sandbox, table: str) -> dict[str, dict]:
    return {r["sfid"]: r for r in store_rows(sandbox, f"SELECT * FROM cache.{table}")}


def policy_dags():
    """The product's policy DAGs as Airflow parses them from the test dags folder."""
    from tests.dags import policy_dags as module

    return module
