r"""Against the usual way: the straightforward Airflow DAG (bench/usual_way.py: REST query_all → DataFrame →
insert_rows → SalesforceBulkOperator delete) and our delete policy reading Salesforce (``bench_delete_salesforce_api``)
on the same records (the org reseeded with the same seed before each), side by side in one deployment, at two sizes.

Reported per run: end to end, the stages we control (every task's time less the org's own processing of the
run's Bulk jobs, which is shown apart), the org's processing time, and API calls. Asserted: both act on every
eligible record; ours at least 10x faster on the controlled stages and faster end to end; our API calls within
100 per 1,000,000 records acted on, plus 25.

    BENCH_SCALE=1000000 BENCH_SCALE_SMALL=100000 \
        .venv/bin/python -m pytest bench/test_bench_usual_way.py --benchmark-only -s
"""

from __future__ import annotations

import os

import pytest

from bench import org, usual_way
from bench.conftest import RESULTS
from bench.scale import RunCost, measure, policy_id, table

LARGE = int(os.environ.get("BENCH_SCALE", "1000000"))
SMALL = int(os.environ.get("BENCH_SCALE_SMALL", "100000"))
SIZES = sorted({SMALL, LARGE})
OURS = f"retention__{policy_id('delete', 'salesforce_api')}"
WAYS = {"usual": usual_way.DAG_ID, "ours": OURS}

COSTS: dict[tuple[int, str], RunCost] = {}


@pytest.fixture(scope="module")
def ready(deployment):
    for dag_id in WAYS.values():
        deployment.wait_for_dag(dag_id)
    return deployment


def _fresh(sandbox, size: int) -> int:
    eligible = org.seed_eligible(sandbox, "delete", size)
    org.empty_cache_table(sandbox, usual_way.TABLE.removeprefix("cache."))
    org.empty_cache_table(sandbox, policy_id("delete", "salesforce_api"))
    org.reload_mirror(sandbox)
    org.wait_synced(sandbox)
    return eligible


def controlled(cost: RunCost) -> float:
    """Seconds of the run's tasks that are ours to make faster: all but the org's processing of Bulk jobs."""
    return cost.task_seconds - cost.org_seconds


# Seeding a million records and the usual way's run over them take longer than the suite's per-test limit.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("size", SIZES)
def test_the_usual_way_and_ours_side_by_side(benchmark, ready, sampler, sandbox, size, way):
    benchmark.group = f"usual-way-{size}"
    out: dict = {}

    def setup():
        out["eligible"] = _fresh(sandbox, size)

    def run():
        out["cost"] = measure(ready, sampler, sandbox, WAYS[way], {"dry_run": False, "cutoff": None}
                              if way == "ours" else {})

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    cost: RunCost = out["cost"]
    with sandbox.org_conn() as conn:
        deleted = conn.execute("SELECT count(*) FROM org.contact WHERE isdeleted").fetchone()[0]
    cost.extra.update(size=size, way=way, eligible=out["eligible"], deleted=deleted, controlled=controlled(cost))
    cost.save(RESULTS, f"usual_way_{way}_{size}")
    COSTS[size, way] = cost
    benchmark.extra_info.update(cost.extra, api_calls=cost.api_calls, org_seconds=cost.org_seconds,
                                wall=cost.wall)
    print(f"\n{way} at {size}: {cost.state}, {deleted} deleted of {out['eligible']} eligible; end to end "
          f"{cost.wall:.1f}s, controlled {controlled(cost):.1f}s, org processing {cost.org_seconds:.1f}s, "
          f"{cost.api_calls} API calls\n{table({f'{way} {size}': cost})}")
    assert cost.state == "success", cost
    assert deleted == out["eligible"] == size
    if way == "ours":
        usual = COSTS.get((size, "usual"))
        assert usual, "the usual way runs first at each size"
        print(f"at {size}: ours {controlled(usual) / controlled(cost):.2f}x as fast on the controlled stages, "
              f"{usual.wall / cost.wall:.2f}x end to end; API calls {cost.api_calls} against {usual.api_calls}")
        assert cost.api_calls <= 100 * deleted / 1_000_000 + 25, f"{cost.api_calls} API calls for {deleted}"
        assert controlled(usual) >= 10 * controlled(cost), (controlled(usual), controlled(cost))
        assert cost.wall < usual.wall, (usual.wall, cost.wall)
