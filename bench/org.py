"""The org as the benchmarks set it up and read it: seeded to an exact number of eligible records, its API
usage counter, its Bulk jobs' own processing time, and the Connect mirror caught up before a run."""

from __future__ import annotations

import datetime as dt
import time

import requests
from psycopg import sql

from tests.policy_support import ACTIVE_HOLDS

# The org is seeded as of this day and the runs are dated the day after, so every size sees the same history.
SEED_NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
LOGICAL_DATE = dt.datetime(2026, 11, 2, 3, tzinfo=dt.UTC)
# The bench policies' retention period: most seeded records are past it, so seeding stays cheap at a million.
OLDER_THAN_DAYS = 30
CUTOFF = LOGICAL_DATE - dt.timedelta(days=OLDER_THAN_DAYS)

# What each action's policy selects, as SQL over the org (tests/policy_support.py's selections, holds left out).
ELIGIBLE = {
    "delete": ("contact", "lastmodifieddate", f"""
        SELECT id FROM org.contact c WHERE NOT isdeleted AND lastmodifieddate < %(cutoff)s
        AND leadsource IS DISTINCT FROM 'Partner Referral'
        AND NOT EXISTS (SELECT 1 FROM org.case k WHERE k.contactid = c.id AND NOT k.isdeleted)
        AND id NOT IN ({ACTIVE_HOLDS})"""),
    "mask": ("lead", "createddate", f"""
        SELECT id FROM org.lead WHERE NOT isdeleted AND createddate < %(cutoff)s AND NOT isconverted
        AND id NOT IN ({ACTIVE_HOLDS})"""),
}


def api_usage(sandbox) -> int:
    """The org's count of API requests today, read from the sandbox's health endpoint (which itself counts
    nothing), so the benchmark's reading adds no call to what it measures."""
    r = requests.get(f"{sandbox.instance_url}/__sandbox/health", verify=sandbox.ca, timeout=30)
    r.raise_for_status()
    return int(r.json()["api_usage"])


def connect(sandbox, action: str) -> None:
    """Pause or resume the Connect sync loop (``action``: pause | resume)."""
    env = sandbox.env
    url = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}/actions/{action}"
    requests.post(url, headers={"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}, verify=sandbox.ca,
                  timeout=30).raise_for_status()


def empty_cache_table(sandbox, table: str) -> None:
    """Empty ``cache.<table>`` if it exists. Truncated, not dropped: the policy's External Object view
    (``retention_external``) depends on it."""
    with sandbox.store_conn() as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"cache.{table}",)).fetchone()[0]:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier("cache", table)))


def reload_mirror(sandbox) -> None:
    """Reload every Connect mapping (Heroku Connect's "Reload": truncate the table and read the object again), as
    a team does after reloading an org's data: a cleared and reseeded org leaves no deletion for a poll to see."""
    env = sandbox.env
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    base = env["HEROKU_CONNECT_API_URL"]
    body = requests.get(f"{base}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}", params={"deep": "true"},
                        headers=headers, verify=sandbox.ca, timeout=30).json()
    for mapping in body["mappings"]:
        requests.post(f"{base}/mappings/{mapping['id']}/actions/reload", headers=headers, verify=sandbox.ca,
                      timeout=30).raise_for_status()


def wait_synced(sandbox, tables: tuple[str, ...] = ("contact", "lead"), timeout: float = 3600) -> None:
    """Until the Connect mirror holds every live row of ``tables`` and every mapping reports DATA_SYNCED."""
    env = sandbox.env
    url = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}"
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    deadline = time.monotonic() + timeout
    with sandbox.org_conn() as org, sandbox.store_conn() as store:
        def counts(conn, schema: str) -> list[int]:
            return [conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE NOT coalesce(isdeleted, false)").format(
                sql.Identifier(schema, t))).fetchone()[0] for t in tables]

        want = counts(org, "org")
        while time.monotonic() < deadline:
            body = requests.get(url, params={"deep": "true"}, headers=headers, verify=sandbox.ca, timeout=30).json()
            if counts(store, "salesforce") == want and all(m["state"] == "DATA_SYNCED" for m in body["mappings"]):
                return
            time.sleep(1)
    raise AssertionError("the Connect mirror did not catch up")


def seed_eligible(sandbox, action: str, eligible: int, *, seed: int = 5) -> int:
    """Clear the org and seed it so that at least ``eligible`` records are eligible for ``action``'s policy, then
    move the date field of the surplus (the highest Ids) to the seed's day (an edit then), so exactly
    ``eligible`` are.
    The same arguments give the same org. Returns the eligible count."""
    from sandbox import seed as seeding

    table, date_field, query = ELIGIBLE[action]
    # Seeded records per eligible one, with room to spare (measured: about 0.6 of contacts, 0.75 of leads).
    main = int(eligible / (0.55 if action == "delete" else 0.7)) + 100
    counts = {"contacts": main, "leads": main // 10} if action == "delete" else {
        "contacts": max(main // 10, 100), "leads": main, "opportunities": 0}
    with sandbox.org_conn() as conn:
        seeding.clear(conn)
        seeding.seed(conn, seed=seed, now=SEED_NOW, **counts)
        conn.execute("ANALYZE")
        have = conn.execute(f"SELECT count(*) FROM ({query}) e", {"cutoff": CUTOFF}).fetchone()[0]
        assert have >= eligible, f"seeded {have} eligible, fewer than {eligible}: lower the ratio in seed_eligible"
        dates = sql.SQL(", ").join(sql.SQL("{} = %(now)s").format(sql.Identifier(f))
                                   for f in dict.fromkeys([date_field, "lastmodifieddate"]))
        conn.execute(sql.SQL("UPDATE {t} SET {dates}, systemmodstamp = clock_timestamp() WHERE id IN ("
                             "SELECT id FROM (" + query + ") e ORDER BY id DESC LIMIT %(surplus)s)").format(
            t=sql.Identifier("org", table), dates=dates),
            {"cutoff": CUTOFF, "now": SEED_NOW, "surplus": have - eligible})
        return conn.execute(f"SELECT count(*) FROM ({query}) e", {"cutoff": CUTOFF}).fetchone()[0]


def org_processing(sandbox, since: dt.datetime, until: dt.datetime) -> dict[str, float]:
    """Seconds the org spent processing the Bulk jobs created in a window, as it reports them in job info
    (``totalProcessingTime`` of a Bulk 2.0 job; of a Bulk 1.0 job, the sum over its batches): read from the
    sandbox's job table, which those fields are served from, so reading them costs the org no API call."""
    with sandbox.org_conn() as conn:
        rows = conn.execute("""
            SELECT j.api, sum(CASE WHEN j.api = 'v1' THEN (SELECT coalesce(sum(b.processing_ms), 0)
                                                          FROM bulk.batches b WHERE b.job_id = j.id)
                                   ELSE j.processing_ms END), count(*)
            FROM bulk.jobs j WHERE j.created_at BETWEEN %s AND %s GROUP BY j.api""", (since, until)).fetchall()
    return ({f"bulk_{api}_seconds": float(ms) / 1000 for api, ms, _ in rows}
            | {f"bulk_{api}_jobs": n for api, _, n in rows})
