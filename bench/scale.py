"""One measured DAG run in a deployment: what each task process cost (wall time, process start, peak memory),
what the sandbox spent meanwhile, the org's API calls and its own Bulk processing time.

Tasks and map indexes are read from the run's task instances, never listed here: the DAG's shape may change
(act and confirm become mapped over chunks) without this module knowing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench import org
from tests.conftest import REPO

SOURCES = ("salesforce_api", "heroku_connect")
ACTIONS = {"delete": "inactive_contacts", "mask": "stale_leads_mask"}
# What Airflow's task runner logs once it has parsed the DAG file, before it calls the operator: the time from
# the process's start to this line is what a deployment pays per task before any of the product's code runs.
READY_EVENTS = ("Worker startup parse complete",)


def policy_id(action: str, source: str) -> str:
    return f"bench_{action}_{source}"


def bench_policies() -> dict[str, str]:
    """The example delete and mask policies, once per source, manual-only, with the guard above a million and
    the bench's retention period (``org.OLDER_THAN_DAYS``); each retains into a table of its own."""
    out = {}
    for action, example in ACTIONS.items():
        base = yaml.safe_load((REPO / "include" / "policies" / f"{example}.yaml").read_text())
        for source in SOURCES:
            pid = policy_id(action, source)
            policy = {**base, "id": pid, "source": source, "schedule": None, "catchup": False,
                      "description": f"{base['description']} (benchmark, {source})",
                      "guards": {"max_records_per_run": 10_000_000},
                      "select": {**base["select"], "older_than_days": org.OLDER_THAN_DAYS},
                      "retain": {**base["retain"], "table": pid}}
            out[pid] = yaml.safe_dump(policy, sort_keys=False)
    return out


@dataclass
class TaskCost:
    task_id: str
    map_index: int
    state: str
    wall: float  # the task instance's start to end, as Airflow records it (its clock starts after the fork)
    process_start: float | None  # the process's start to the task runner being ready to call the operator
    work: float  # the task runner being ready to the task's end: its time without process start
    peak_rss_mb: float | None
    sandbox_cpu: float  # CPU seconds of the sandbox server process during the task
    org_db_cpu: float  # CPU seconds of the org database's Postgres backends during the task


@dataclass
class RunCost:
    dag_id: str
    run_id: str
    state: str
    wall: float
    api_calls: int
    tasks: list[TaskCost] = field(default_factory=list)
    org_processing: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def org_seconds(self) -> float:
        return sum(v for k, v in self.org_processing.items() if k.endswith("_seconds"))

    @property
    def task_seconds(self) -> float:
        return sum(t.wall for t in self.tasks)

    def by_task(self) -> dict[str, dict]:
        """Mapped task instances folded into their task: walls and CPU summed, the largest peak, how many."""
        out: dict[str, dict] = {}
        for t in self.tasks:
            row = out.setdefault(t.task_id, {"instances": 0, "wall": 0.0, "process_start": 0.0, "work": 0.0,
                                             "peak_rss_mb": 0.0, "sandbox_cpu": 0.0, "org_db_cpu": 0.0})
            row["instances"] += 1
            for key in ("wall", "process_start", "work", "sandbox_cpu", "org_db_cpu"):
                row[key] += getattr(t, key) or 0.0
            row["peak_rss_mb"] = max(row["peak_rss_mb"], t.peak_rss_mb or 0.0)
        return out

    def save(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(asdict(self) | {"by_task": self.by_task()}, indent=1))


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ready_at(home: Path, dag_id: str, ti: dict) -> float | None:
    """When the task runner logged its last line before the operator (see READY_EVENTS), from the task's log."""
    folder = home / "logs" / f"dag_id={dag_id}" / f"run_id={ti['dag_run_id']}" / f"task_id={ti['task_id']}"
    if ti["map_index"] >= 0:
        folder /= f"map_index={ti['map_index']}"
    path = folder / f"attempt={ti['try_number']}.log"
    if not path.exists():
        return None
    ready = None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("event", "")).startswith(READY_EVENTS):
            ready = _when(entry["timestamp"]).timestamp()
    return ready


def measure(deployment, sampler, sandbox, dag_id: str, conf: dict | None = None) -> RunCost:
    """Trigger ``dag_id`` in the deployment, wait for it, and collect what it cost."""
    used = org.api_usage(sandbox)
    began = dt.datetime.now(dt.UTC)
    run = deployment.run(dag_id, org.LOGICAL_DATE, conf)
    ended = dt.datetime.now(dt.UTC)
    api_calls = org.api_usage(sandbox) - used
    sampler.sample()
    cost = RunCost(dag_id, run["dag_run_id"], run["state"], (ended - began).total_seconds(), api_calls,
                   org_processing=org.org_processing(sandbox, began, ended))
    for ti in deployment.task_instances(dag_id, run["dag_run_id"]):
        if not (ti.get("start_date") and ti.get("end_date")):
            continue
        start, end = _when(ti["start_date"]).timestamp(), _when(ti["end_date"]).timestamp()
        proc = sampler.tasks.get(ti["id"])
        ready = _ready_at(deployment.home, dag_id, ti)
        server_cpu, db_cpu = sampler.cpu_between(start, end)
        cost.tasks.append(TaskCost(
            ti["task_id"], ti["map_index"], ti["state"], round(end - start, 3),
            round(ready - proc.started, 3) if proc and ready else None, round(end - (ready or start), 3),
            round(proc.peak_rss_mb, 1) if proc else None, round(server_cpu, 2), round(db_cpu, 2)))
    cost.tasks.sort(key=lambda t: (t.task_id, t.map_index))
    return cost


def table(costs: dict[str, RunCost]) -> str:
    """Markdown: one row per run and task (mapped instances folded): wall, process start, work, peak memory, and
    the sandbox's CPU during the task (share: its CPU seconds per second of the task's wall time)."""
    lines = ["| run | task | instances | wall s | process start s | work s | peak RSS MB | sandbox CPU s "
             "| org DB CPU s | sandbox share |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, cost in costs.items():
        for task, row in cost.by_task().items():
            share = (row["sandbox_cpu"] + row["org_db_cpu"]) / row["wall"] if row["wall"] else 0.0
            lines.append(f"| {name} | {task} | {row['instances']} | {row['wall']:.1f} | {row['process_start']:.1f} "
                         f"| {row['work']:.1f} | {row['peak_rss_mb']:.0f} | {row['sandbox_cpu']:.1f} "
                         f"| {row['org_db_cpu']:.1f} | {share:.0%} |")
    return "\n".join(lines)
