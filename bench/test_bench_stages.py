"""The stages that run in the store, near the database's own limit: extract (from the Heroku Connect mirror),
subset, load and validate of one ``inactive_contacts`` run over an org of ``BENCH_STAGES_RECORDS`` contacts
(default 1,000,000, every one past the cutoff), called in this process as their operators call them (no process
start), side by side with one raw ``COPY`` of the same retained rows into a table shaped like the cache table.

Issue 11's targets: the four stages summed within 4x of the COPY, and ``load_to_cache`` within 1.5x of it. The org
is seeded once (contacts, their accounts, one case per 50 contacts, the default privacy holds; no leads or
opportunities, which this policy never reads) and Heroku Connect's own sync fills the mirror; the sync loop is then
paused while measuring. Run with ``make bench`` or
``pytest bench/test_bench_stages.py --benchmark-only -s``; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import time

import pytest
import requests

CONTACTS = int(os.environ.get("BENCH_STAGES_RECORDS", "1000000"))
# The policy's selection over the mirror, written here independently of the product's SQL: what must be staged.
ELIGIBLE = """SELECT count(*) FROM salesforce.contact c WHERE NOT coalesce(c.isdeleted, false)
              AND c.lastmodifieddate < %s AND c.leadsource IS DISTINCT FROM 'Partner Referral'
              AND NOT EXISTS (SELECT 1 FROM salesforce."case" k WHERE k.contactid = c.sfid)
              AND NOT EXISTS (SELECT 1 FROM salesforce.privacyhold h WHERE h.referencerecordid = c.sfid
                              AND h.isactive AND NOT coalesce(h.isdeleted, false)
                              AND (h.enddate IS NULL OR h.enddate >= (now() AT TIME ZONE 'UTC')::date))"""
LOGICAL_DATE = dt.datetime(2030, 1, 1, 3, tzinfo=dt.UTC)  # the seed's history ends 2026-11-01: all past the cutoff


def _connect(sandbox, action: str) -> None:
    env = sandbox.env
    requests.post(f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}/actions/"
                  f"{action}", headers={"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}, verify=sandbox.ca,
                  timeout=30).raise_for_status()


def _wait_mirrored(sandbox, tables=("contact", "case", "privacyhold"), timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    with sandbox.org_conn() as org, sandbox.store_conn() as store:
        want = {t: org.execute(f'SELECT count(*) FROM org."{t}" WHERE NOT isdeleted').fetchone()[0] for t in tables}
        while time.monotonic() < deadline:
            have = {t: store.execute(f'SELECT count(*) FROM salesforce."{t}"').fetchone()[0] for t in tables}
            if have == want:
                store.execute('ANALYZE salesforce.contact, salesforce."case", salesforce.privacyhold')
                return
            time.sleep(2)
    raise AssertionError(f"the Connect mirror did not catch up: {have} of {want}")


@pytest.fixture(scope="module")
def world(sandbox):
    import great_expectations as gx

    from sandbox import seed

    gx.get_context(mode="ephemeral")  # GX's import (seconds) is a process start's cost, not validate's
    with sandbox.org_conn() as conn:
        seed.clear(conn)
        seed.seed(conn, contacts=CONTACTS, seed=5, now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), leads=0,
                  opportunities=0, cases=CONTACTS // 50)
    with sandbox.store_conn() as conn:
        conn.execute("DROP TABLE IF EXISTS cache.contact CASCADE")
    _wait_mirrored(sandbox)
    _connect(sandbox, "pause")  # mirroring must not share the CPU with what is measured
    try:
        yield sandbox
    finally:
        _connect(sandbox, "resume")


def _timed(times: dict, name: str, fn):
    started = time.perf_counter()
    out = fn()
    times[name] = time.perf_counter() - started
    return out


def _raw_copy(store, data: bytes) -> float:
    """One COPY of ``data`` into an empty table shaped like cache.contact (its primary key included), committed."""
    with store.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS retention_staging.bench_raw_copy")
        conn.execute("CREATE TABLE retention_staging.bench_raw_copy (LIKE cache.contact INCLUDING ALL)")
    started = time.perf_counter()
    with store.connect() as conn, conn.cursor().copy("COPY retention_staging.bench_raw_copy FROM STDIN") as copy:
        for at in range(0, len(data), 1 << 20):
            copy.write(data[at:at + (1 << 20)])
    seconds = time.perf_counter() - started
    with store.connect() as conn:
        conn.execute("DROP TABLE retention_staging.bench_raw_copy")
    return seconds


@pytest.mark.benchmark(group="stages")
def test_store_stages_near_one_raw_copy(benchmark, world, tmp_path):
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Guards, load_policy
    from retention.steps import load, validate
    from retention.steps.extract import extract
    from retention.steps.run import make_run
    from tests.conftest import REPO

    sandbox = world
    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml").model_copy(
        update={"guards": Guards(max_records_per_run=10_000_000)})
    run = make_run(policy, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE, dag_run_id="bench_stages", params={})
    store, sf = RetentionStoreHook(), SalesforceBulk2Hook()
    times: dict[str, float] = {}
    org_count = sf.count  # the org's own count inside validate is Salesforce's work: shown apart

    def counted(soql):
        return _timed(times, "validate: the org's count", lambda: org_count(soql))

    sf.count = counted

    def stages():
        extracted = _timed(times, "extract", lambda: extract(store, sf, policy, run, still_running=lambda _: False))
        subset_rows = _timed(times, "subset", lambda: load.subset(store, policy, run, None))
        loaded = _timed(times, "load_to_cache", lambda: load.load(store, policy, run))
        validated = _timed(times, "validate", lambda: validate.validate(store, sf, policy, run, extracted,
                                                                         docs_dir=tmp_path / "docs"))
        return extracted, subset_rows, loaded, validated

    extracted, subset_rows, loaded, validated = benchmark.pedantic(stages, rounds=1, iterations=1)
    with sandbox.store_conn() as conn:
        eligible = conn.execute(ELIGIBLE, (run.cutoff_value("datetime"),)).fetchone()[0]
        retained = conn.execute("SELECT count(*) FROM cache.contact WHERE _retention_run = %s",
                                (run.run_key,)).fetchone()[0]
        buffer = io.BytesIO()
        with conn.cursor().copy("COPY cache.contact TO STDOUT") as out:
            for block in out:
                buffer.write(block)
    # The same rows, side by side: one COPY before the comparison is read, the best of two (the stricter ratio).
    raw = min(_raw_copy(store, buffer.getvalue()) for _ in range(2))
    stages_total = sum(times[s] for s in ("extract", "subset", "load_to_cache", "validate"))
    figures = {"contacts": CONTACTS, "eligible": eligible, "held": extracted.held, "raw_copy_s": round(raw, 2),
               **{f"{k}_s": round(v, 2) for k, v in times.items()}, "stages_s": round(stages_total, 2),
               "stages_vs_copy": round(stages_total / raw, 2), "load_vs_copy": round(times["load_to_cache"] / raw, 2)}
    benchmark.extra_info.update(figures)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
    assert extracted.eligible == extracted.staged == subset_rows == loaded == retained == eligible > 0
    assert validated.counts["retained"] == eligible, validated.message
    assert stages_total <= 4 * raw, figures
    assert times["load_to_cache"] <= 1.5 * raw, figures
