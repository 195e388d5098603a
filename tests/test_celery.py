"""A policy run on a real distributed executor: Airflow's CeleryExecutor with Debian's ``redis-server`` as the
broker and two ``airflow celery worker`` processes (tests/celery_cluster.py starts them, with the scheduler, the
API server and the dag processor, on a metadata database of their own in the sandbox's Postgres).

One DAG run of a delete policy over a few hundred contacts must succeed with its task instances on both
workers, and leave exactly what the policy says, counted here from how the contacts were made (old, held,
recent) rather than from another run: an outcome is right because it matches the policy, and a single-worker
run is held to the same numbers side by side in bench/test_bench_celery.py.

Each worker runs one task at a time (concurrency 1). Tasks that are ready together (the mapped chunks of one
step) therefore always land on both workers; a chain of single tasks lands wherever Redis hands each one, to
whichever idle worker is waiting on the queue at that moment.
"""

from __future__ import annotations

import pytest

from tests.celery_cluster import delete_policy, make_contacts, outcome, start_celery_airflow, stop_celery_airflow
from tests.conftest import SUITE_DEPLOYMENT, shared_tmp

# Chunks of 60: the 240 eligible records make four delete_or_mask and four verify_in_salesforce task instances.
POLICY = {**delete_policy("celery_contacts", "Celery test"), "guards": {"chunk_records": 60}}
DAG = f"retention__{POLICY['id']}"
WORKERS = {"worker-1", "worker-2"}


@pytest.fixture(scope="module")
def cluster(sandbox):
    cluster = start_celery_airflow(sandbox, [POLICY], workers=len(WORKERS), home=shared_tmp("retention-celery-"),
                                   **SUITE_DEPLOYMENT)
    yield cluster
    stop_celery_airflow(cluster)


def test_one_run_spreads_over_two_celery_workers_and_does_what_the_policy_says(cluster, sandbox, sf):
    contacts = make_contacts(sandbox, sf, "Celery test", old=240, held=5, recent=55)

    run = cluster.run(DAG)

    tis = cluster.task_instances(DAG, run["dag_run_id"])
    assert run["state"] == "success", (tis, cluster.log("scheduler")[-3000:])
    assert tis and all(ti["state"] == "success" for ti in tis), tis
    # Every task instance of the run, mapped ones included, ran on one of the two workers, and both took some.
    assert {ti["hostname"] for ti in tis} == WORKERS, tis
    # The mapped steps: four chunks each. Which worker takes which chunk is Redis's choice: a quick chunk may be
    # done before the other worker asks for one, so the spread is asserted over the run, not per step.
    for task_id in ("delete_or_mask", "verify_in_salesforce"):
        chunks = [ti for ti in tis if ti["task_id"] == task_id]
        assert sorted(ti["map_index"] for ti in chunks) == [0, 1, 2, 3], chunks
    old = len(contacts.old)
    assert outcome(sandbox, POLICY["id"], contacts) == {
        # status, eligible, held, staged, retained, acted, failed, Salesforce's own count of the eligible
        "ledger": [("succeeded", old, len(contacts.held), old, old, old, 0, old)],
        "retained": {"old": ["done"] * old, "held": [], "recent": []},
        "deleted": {"old": old, "held": 0, "recent": 0},
        "foreign_rows": [],
    }
