r"""Scale: a policy run over N eligible records end to end, for delete and for mask, through both sources, run
by a deployment (``airflow standalone``: the scheduler's LocalExecutor runs each task in its own process), at
two sizes so that memory can be seen to stay flat.

Per task instance (mapped ones each): wall time, the process's start-up before the operator runs, peak resident
memory of the task process (its kernel high-water mark, sampled from /proc), and the CPU the sandbox spent in
the meantime (its server process and the org database's Postgres backends), so the emulator's cost is not read
as the product's. Per run: records acted on (asserted equal to the eligible count), the org's API calls (its
own counter) and its processing time of the run's Bulk jobs.

    BENCH_SCALE=1000000 BENCH_SCALE_SMALL=100000 \
        .venv/bin/python -m pytest bench/test_bench_scale.py --benchmark-only -s

The Connect sync loop keeps running (the mirror source and every run's confirm step read it); its CPU is
in the sandbox's share. Each run's figures are saved under .benchmarks/runs/ and printed as a table.
"""

from __future__ import annotations

import os

import pytest

from bench import org
from bench.conftest import RESULTS
from bench.scale import ACTIONS, SOURCES, RunCost, measure, policy_id, table

LARGE = int(os.environ.get("BENCH_SCALE", "1000000"))
SMALL = int(os.environ.get("BENCH_SCALE_SMALL", "100000"))
SIZES = sorted({SMALL, LARGE})
PEAK_LIMIT_MB = 500
# Flat: a task's peak at the larger size within this of its peak at the smaller (10x fewer records).
FLAT_RATIO, FLAT_SLACK_MB = 1.2, 30

COSTS: dict[str, RunCost] = {}


@pytest.fixture(scope="module")
def ready(deployment, sandbox):
    for action in ACTIONS:
        for source in SOURCES:
            deployment.wait_for_dag(f"retention__{policy_id(action, source)}")
    return deployment


def _fresh(sandbox, action: str, source: str, size: int) -> dict:
    eligible = org.seed_eligible(sandbox, action, size)
    org.empty_cache_table(sandbox, policy_id(action, source))
    org.reload_mirror(sandbox)
    org.wait_synced(sandbox)
    return {"eligible": eligible}


# Seeding a million records and the usual way's run over them take longer than the suite's per-test limit.
@pytest.mark.timeout(3600)
@pytest.mark.benchmark(group="scale")
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("size", SIZES)
def test_a_policy_run_at_scale(benchmark, ready, sampler, sandbox, size, action, source):
    pid = policy_id(action, source)
    seeded: dict = {}
    out: dict = {}

    def setup():
        seeded.update(_fresh(sandbox, action, source, size))

    def run():
        out["cost"] = measure(ready, sampler, sandbox, f"retention__{pid}", {"dry_run": False, "cutoff": None})

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    cost: RunCost = out["cost"]
    with sandbox.store_conn() as conn:
        acted = conn.execute("SELECT acted FROM retention.runs WHERE policy_id = %s ORDER BY id DESC LIMIT 1",
                             (pid,)).fetchone()[0]
    cost.extra.update(size=size, action=action, source=source, acted=acted, **seeded)
    name = f"{pid}_{size}"
    cost.save(RESULTS, name)
    COSTS[name] = cost
    benchmark.extra_info.update(acted=acted, api_calls=cost.api_calls, org_seconds=cost.org_seconds,
                                by_task=cost.by_task())
    print(f"\n{name}: {cost.state}, {acted} acted of {seeded['eligible']} eligible in {cost.wall:.1f}s, "
          f"{cost.api_calls} API calls, org processing {cost.org_seconds:.1f}s\n{table({name: cost})}")
    assert cost.state == "success", cost
    assert acted == seeded["eligible"] == size
    unmeasured = [t for t in cost.tasks if t.peak_rss_mb is None]
    assert not unmeasured, f"task processes never sampled: {unmeasured}"
    over = {t.task_id: t.peak_rss_mb for t in cost.tasks if t.peak_rss_mb >= PEAK_LIMIT_MB}
    assert not over, f"task processes over {PEAK_LIMIT_MB} MB: {over}"

    other = [COSTS[f"{pid}_{n}"] for n in SIZES if n != size and f"{pid}_{n}" in COSTS]
    if other:  # the other size already ran in this session: memory must not have grown with the records
        _assert_flat(*sorted([other[0], cost], key=lambda c: c.extra["size"]))


def _assert_flat(small: RunCost, large: RunCost) -> None:
    """Each task's peak at the larger size is within FLAT_RATIO (+ slack) of its peak at the smaller size."""
    peaks = {task: row["peak_rss_mb"] for task, row in small.by_task().items()}
    grown = {task: (peaks.get(task), row["peak_rss_mb"]) for task, row in large.by_task().items()
             if task not in peaks or row["peak_rss_mb"] > peaks[task] * FLAT_RATIO + FLAT_SLACK_MB}
    print(f"peak MB by task, {small.extra['size']} -> {large.extra['size']} records: "
          f"{ {t: (peaks.get(t), r['peak_rss_mb']) for t, r in large.by_task().items()} }")
    assert not grown, f"peak memory grew with the records: {grown}"
