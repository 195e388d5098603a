"""One policy DAG run under the CeleryExecutor with one worker and with two, side by side in one Airflow (Redis
broker, scheduler, API server, dag processor: tests/celery_cluster.py): two identical delete policies over two
identical sets of contacts, after a warm-up run, the first with worker-2 stopped, the second with both workers.
Reports each run's wall time (trigger to end), its tasks' times and hosts, and the ratio one worker / two workers.

The machine's 2 cores are shared by the sandbox, Postgres, the scheduler and both workers, so the ratio is
reported, not asserted: what is asserted is that both runs leave the same outcome (ledger counts, retained rows,
records deleted) and that the two-worker run used both workers. Sizes: ``BENCH_CELERY_CONTACTS`` contacts past
the cutoff per run (default 2,000), with 20 held and 200 recent ones beside them; ``BENCH_CELERY_CHUNK`` records
per chunk of the mapped act and read-back (default 250,000, the product's default).

    BENCH_CELERY_CONTACTS=100000 BENCH_CELERY_CHUNK=25000 PYTHONPATH=$PWD/plugins:$PWD \
        .venv/bin/python -m pytest bench/test_bench_celery.py --benchmark-only -s
"""

from __future__ import annotations

import os
import time

import pytest

from tests.celery_cluster import delete_policy, make_contacts, outcome, start_celery_airflow, stop_celery_airflow
from tests.conftest import shared_tmp

OLD = int(os.environ.get("BENCH_CELERY_CONTACTS", "2000"))
# The act and the read-back are mapped over chunks of this many records: the steps two workers can share.
CHUNK = int(os.environ.get("BENCH_CELERY_CHUNK", "250000"))
POLICIES = {workers: delete_policy(f"bench_celery_{workers}w", f"Celery bench {workers}w") for workers in (1, 2)}
for _policy in POLICIES.values():
    _policy["guards"] = {"max_records_per_run": max(50_000, OLD), "chunk_records": CHUNK}
# Run first, on a few records with both workers: the first run after start pays for what every later one finds
# warm (imports in the workers' pool processes, the API server's first requests), which is no worker's share.
WARM_UP = delete_policy("bench_celery_warm_up", "Celery bench warm-up")


@pytest.fixture(scope="module")
def cluster(sandbox):
    cluster = start_celery_airflow(sandbox, [WARM_UP, *POLICIES.values()], workers=2,
                                   home=shared_tmp("retention-celery-"))
    yield cluster
    stop_celery_airflow(cluster)


def _wait_ready(cluster, name: str, timeout: float = 120) -> None:
    """Until Celery logs the worker ready (connected to Redis and consuming)."""
    deadline = time.monotonic() + timeout
    while f"{name}@" not in cluster.log(name) or " ready." not in cluster.log(name):
        assert time.monotonic() < deadline, cluster.log(name)[-3000:]
        time.sleep(0.5)


@pytest.mark.benchmark(group="celery")
def test_one_policy_run_on_one_celery_worker_and_on_two(benchmark, cluster, sandbox, sf):
    contacts = {workers: make_contacts(sandbox, sf, policy["select"]["where"].split("'")[1], old=OLD, held=20,
                                       recent=200) for workers, policy in POLICIES.items()}
    for workers in POLICIES:
        cluster.wait_for_dag(f"retention__{POLICIES[workers]['id']}")
    runs: dict[int, dict] = {}

    def run(workers: int) -> None:
        dag_id = f"retention__{POLICIES[workers]['id']}"
        done = cluster.run(dag_id, timeout=1800)
        tis = cluster.task_instances(dag_id, done["dag_run_id"])
        assert done["state"] == "success", tis
        runs[workers] = {"seconds": round(done["seconds"], 1), "hosts": sorted({t["hostname"] for t in tis}),
                         "tasks": [(t["task_id"], t["map_index"], t["hostname"]) for t in tis]}

    make_contacts(sandbox, sf, "Celery bench warm-up", old=20, held=0, recent=0)
    assert cluster.run(f"retention__{WARM_UP['id']}")["state"] == "success"
    cluster.stop("worker-2")
    run(1)
    cluster.start_worker("worker-2")
    _wait_ready(cluster, "worker-2")
    benchmark.pedantic(run, args=(2,), rounds=1, iterations=1)

    assert runs[1]["hosts"] == ["worker-1"] and runs[2]["hosts"] == ["worker-1", "worker-2"], runs
    one, two = (outcome(sandbox, POLICIES[w]["id"], contacts[w]) for w in (1, 2))
    assert one == two and one["deleted"]["old"] == OLD, (one, two)
    ratio = runs[1]["seconds"] / runs[2]["seconds"]
    benchmark.extra_info.update(one_worker=runs[1], two_workers=runs[2], ratio=round(ratio, 2), records=OLD)
    print(f"\n{OLD} records retained and deleted: one worker {runs[1]['seconds']}s, two workers "
          f"{runs[2]['seconds']}s (one / two = {ratio:.2f})\n  one: {runs[1]['tasks']}\n  two: {runs[2]['tasks']}")
