"""A whole policy run at scale: ``inactive_contacts`` over an org where about 50,000 contacts are eligible,
run as a real DAG (``dag.test()``) against the sandbox, once reading the Heroku Connect mirror and once
reading Salesforce through a Bulk API 2.0 query, side by side on identical data (the org is reseeded with
the same seed and the cache emptied before each). Reports the wall time, each task's time and the
Salesforce API calls the run made. ``dag.test()`` runs the tasks in one process, so the figures leave
out what a deployment pays per task (a process start, and Great Expectations' import in validate_row_counts).

Run with ``make bench``; results are recorded in docs/benchmarks.md. Sizes come from
``BENCH_PIPELINE_CONTACTS`` (default 150,000 contacts, a third of them eligible).
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
import requests

CONTACTS = int(os.environ.get("BENCH_PIPELINE_CONTACTS", "150000"))


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    # dag.test() runs every task in this process: import Great Expectations once up front (about 7 s here),
    # so that the first variant measured does not pay for both.
    import great_expectations as gx

    from tests.policy_support import policy_world

    gx.get_context(mode="ephemeral")
    with policy_world(sandbox):  # the org is seeded by each variant's setup
        yield sandbox


def _api_usage(sandbox) -> int:
    """API requests the org has counted today (its Sforce-Limit-Info header), this request included."""
    r = requests.get(f"{sandbox.instance_url}/services/data/v59.0/limits", verify=sandbox.ca, timeout=30,
                     headers={"Authorization": f"Bearer {_token(sandbox)}"})
    return int(r.headers["Sforce-Limit-Info"].split("=", 1)[1].split("/")[0])


def _token(sandbox) -> str:
    from simple_salesforce import SalesforceLogin

    env = sandbox.env
    session, _ = SalesforceLogin(username=env["SALESFORCE_USERNAME"], consumer_key=env["SALESFORCE_CONSUMER_KEY"],
                                 privatekey_file=env["SALESFORCE_PRIVATE_KEY_FILE"],
                                 domain=f"localhost:{env['SANDBOX_SF_PORT']}/services/oauth2/token#")
    return session


def _wait_synced(sandbox, timeout: float = 600) -> None:
    env = sandbox.env
    url = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}"
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    deadline = time.monotonic() + timeout
    with sandbox.org_conn() as org, sandbox.store_conn() as store:
        want = org.execute("SELECT count(*) FROM org.contact WHERE NOT isdeleted").fetchone()[0]
        while time.monotonic() < deadline:
            body = requests.get(url, params={"deep": "true"}, headers=headers, verify=sandbox.ca, timeout=30).json()
            have = store.execute("SELECT count(*) FROM salesforce.contact WHERE NOT coalesce(isdeleted, false)"
                                 ).fetchone()[0]
            if have == want and all(m["state"] == "DATA_SYNCED" for m in body["mappings"]):
                return
            time.sleep(1)
    raise AssertionError("the Connect mirror did not catch up")


def _fresh_org(sandbox) -> None:
    """The same org every time: cleared and seeded with one seed and one 'now'; the cache emptied."""
    from sandbox import seed

    with sandbox.org_conn() as conn:
        seed.clear(conn)
        seed.seed(conn, contacts=CONTACTS, seed=5, now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    with sandbox.store_conn() as conn:
        conn.execute("DROP TABLE IF EXISTS cache.contact")
    _wait_synced(sandbox)


@pytest.mark.benchmark(group="policy-run")
@pytest.mark.parametrize("source", ["heroku_connect", "salesforce_api"])
def test_a_policy_run_over_50k_eligible_contacts(benchmark, world, source):
    from retention.factory import build_dag
    from retention.policy import Guards, load_policy
    from tests.conftest import REPO

    sandbox = world
    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml").model_copy(update={
        "source": source, "guards": Guards(max_records_per_run=1_000_000)})
    dag = build_dag(policy)
    logical_date = dt.datetime(2026, 11, 2, 3, tzinfo=dt.UTC)
    result: dict = {}

    def run():
        before = _api_usage(sandbox)
        started = time.monotonic()
        dag_run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None})
        result["seconds"] = time.monotonic() - started
        result["api_calls"] = _api_usage(sandbox) - before - 2  # less the login and limits calls that read it
        result["state"] = str(dag_run.state)
        result["tasks"] = {ti.task_id: round((ti.end_date - ti.start_date).total_seconds(), 2)
                           for ti in dag_run.get_task_instances() if ti.start_date and ti.end_date}

    benchmark.pedantic(run, setup=lambda: _fresh_org(sandbox), rounds=1, iterations=1)
    with sandbox.store_conn() as conn:
        acted = conn.execute("SELECT acted FROM retention.runs WHERE policy_id = 'inactive_contacts' ORDER BY id "
                             "DESC LIMIT 1").fetchone()[0]
    assert result["state"] == "success", result
    benchmark.extra_info.update(result, acted=acted, source=source)
    print(f"\n{source}: {acted} records retained and deleted in {result['seconds']:.1f}s, "
          f"{result['api_calls']} API calls; tasks: {result['tasks']}")
