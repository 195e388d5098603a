"""A real distributed Airflow on the sandbox: CeleryExecutor with Debian's ``redis-server`` as the broker, the
metadata database (and Celery's result backend) in the sandbox's Postgres, the scheduler, the API server (tasks
talk to its execution API), the dag processor, and any number of ``airflow celery worker`` processes.

Used by tests/test_celery.py and bench/test_bench_celery.py. The policies are written by the caller, built
here as dicts, so that a test can add keys (a chunk size for the mapped act and confirm steps) before
dumping them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.airflow_deployment import AIRFLOW, REPO, deployment_env, fresh_metadata_database, wait_until_healthy

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Each worker names the host it runs on through [core] hostname_callable, which is where a task instance's
# hostname comes from: two workers on one machine would otherwise record the same name.
WORKER_NAME_VAR = "RETENTION_CELERY_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the workers started here: the name their launcher gave them."""
    return os.environ[WORKER_NAME_VAR]


def delete_policy(policy_id: str, marker: str, *, older_than_days: int = 30) -> dict:
    """A manual-only delete policy over the contacts whose Title is ``marker``, read through Bulk API 2.0 (no
    Connect mirror to wait for). A dict: add keys (e.g. a chunk size) before ``write_policies``."""
    return {
        "id": policy_id,
        "description": f"Contacts of the Celery test marked {marker!r}",
        "owner": "tests",
        "object": "Contact",
        "schedule": None,
        "start_date": "2025-01-01",
        "select": {"date_field": "LastModifiedDate", "older_than_days": older_than_days,
                   "where": f"Title = '{marker}'"},
        "retain": {"table": f"contact_{policy_id}", "fields": {"LastName": "keep", "Email": "email_domain"}},
        "action": "delete",
        "source": "salesforce_api",
    }


@dataclass
class Contacts:
    """The contacts made for one policy, by what the policy must do with them."""

    old: list[str]      # past the cutoff, not held: retained and deleted
    held: list[str]     # past the cutoff, under a privacy hold: left alone
    recent: list[str]   # inside the retention period: left alone

    @property
    def all(self) -> list[str]:
        return self.old + self.held + self.recent


def make_contacts(sandbox, sf, marker: str, *, old: int, held: int, recent: int, days_old: int = 40) -> Contacts:
    """Contacts titled ``marker``, made through sObject Collections (200 a request) as an integration would;
    the old and held ones then aged in the org's database (the API cannot set LastModifiedDate)."""
    from tests.policy_support import place_hold

    names = [("old", i) for i in range(old)] + [("held", i) for i in range(held)] + [("recent", i)
                                                                                        for i in range(recent)]
    ids: dict[str, list[str]] = {"old": [], "held": [], "recent": []}
    for start in range(0, len(names), 200):
        batch = names[start:start + 200]
        records = [{"attributes": {"type": "Contact"}, "LastName": f"{kind} {i}", "Title": marker,
                    "Email": f"{kind}{i}@{marker.replace(' ', '-').lower()}.example"} for kind, i in batch]
        made = sf.restful("composite/sobjects", method="POST",
                          data=json.dumps({"allOrNone": True, "records": records}))
        assert all(r["success"] for r in made), made
        for (kind, _), result in zip(batch, made, strict=True):
            ids[kind].append(result["id"])
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_old)
    with sandbox.org_conn() as conn:
        conn.execute("UPDATE org.contact SET lastmodifieddate = %s, systemmodstamp = %s WHERE id = ANY(%s)",
                     (when, when, ids["old"] + ids["held"]))
    for sfid in ids["held"]:
        place_hold(sf, sfid, f"Celery test hold {marker}")
    return Contacts(**ids)


def outcome(sandbox, policy_id: str, contacts: Contacts) -> dict:
    """What a run of ``policy_id`` left, in terms that do not depend on which records it had: the ledger's
    counts, and for each kind of contact how many are retained (by action status) and deleted in the org."""
    with sandbox.store_conn() as conn:
        ledger = conn.execute("SELECT status, eligible, held, staged, retained, acted, failed, salesforce_count "
                              "FROM retention.runs WHERE policy_id = %s ORDER BY id", (policy_id,)).fetchall()
        cache = dict(conn.execute(f"SELECT sfid, _action_status FROM cache.contact_{policy_id}").fetchall())
    with sandbox.org_conn() as conn:
        deleted = dict(conn.execute("SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)",
                                    (contacts.all,)).fetchall())
    kinds = {"old": contacts.old, "held": contacts.held, "recent": contacts.recent}
    return {
        "ledger": [tuple(row) for row in ledger],
        "retained": {kind: sorted(cache[i] for i in ids if i in cache) for kind, ids in kinds.items()},
        "deleted": {kind: sum(bool(deleted[i]) for i in ids) for kind, ids in kinds.items()},
        "foreign_rows": sorted(set(cache) - set(contacts.all)),  # retained rows that are none of ours
    }


@dataclass
class CeleryAirflow:
    """The running deployment: ``api`` calls its REST API, ``run`` triggers a DAG run and waits for it."""

    home: Path
    env: dict[str, str]
    url: str
    password: str = ""
    token: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(args, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()  # the child holds its own descriptor

    def start_worker(self, name: str, concurrency: int = 1) -> None:
        """``airflow celery worker`` named ``name`` (its Celery hostname and the hostname its tasks record), with
        its own pid file (two workers share AIRFLOW_HOME) and no log server (the logs are on this disk)."""
        env = {**self.env, WORKER_NAME_VAR: name,
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname"}
        self.start(name, [AIRFLOW, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency",
                          str(concurrency), "--pid", str(self.home / f"{name}.pid"), "--skip-serve-logs"], env)

    def stop(self, *names: str, timeout: float = 60) -> None:
        """SIGTERM to each process group (a Celery worker's warm shutdown, Airflow's own for the others), then
        wait for them together; SIGKILL what is still there after ``timeout``."""
        procs = [self.procs.pop(name) for name in names]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def api(self, method: str, path: str, **kwargs):
        """A REST API call as the admin. Generous timeouts: on 2 shared cores a request can wait for seconds."""
        import requests

        if not self.token:
            self.token = requests.post(f"{self.url}/auth/token", json={"username": "admin", "password":
                                       self.password}, timeout=60).json()["access_token"]
        return requests.request(method, f"{self.url}/api/v2{path}", timeout=60,
                                headers={"Authorization": f"Bearer {self.token}"}, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.api("GET", f"/dags/{dag_id}").status_code != 200:
            assert time.monotonic() < deadline, f"{dag_id} not parsed:\n{self.log('dag-processor')[-3000:]}"
            time.sleep(1)

    def run(self, dag_id: str, timeout: float = 300) -> dict:
        """Trigger ``dag_id`` (a logical date just past: the scheduler runs no task of a future one) and wait
        until the run ends; returns the run with ``seconds`` from trigger to end."""
        self.wait_for_dag(dag_id)
        when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
        started = time.monotonic()
        made = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": when.isoformat()})
        assert made.status_code == 200, made.text
        run_id = made.json()["dag_run_id"]
        deadline = started + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run["state"] in ("success", "failed"):
                return {**run, "seconds": time.monotonic() - started}
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} not finished in {timeout}s: {self.task_instances(dag_id, run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, mapped ones each with its map_index: read from the metadata
        database (TaskInstance's own columns, hostname included)."""
        import psycopg

        url = self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("postgresql+psycopg2", "postgresql")
        with psycopg.connect(url) as conn:
            cur = conn.execute("SELECT task_id, map_index, state, hostname, queue FROM task_instance WHERE dag_id = "
                               "%s AND run_id = %s ORDER BY start_date", (dag_id, run_id))
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def start_celery_airflow(sandbox, policies: list[dict], *, workers: int, home: Path, **settings: str) -> CeleryAirflow:
    """Redis, a fresh metadata database, the scheduler, API server, dag processor and ``workers`` Celery workers
    (``worker-1`` ...), on ``policies`` (written as YAML into ``home``), with ``settings`` (``AIRFLOW__...``) over the
    cluster's own. Returns once the API answers."""
    import yaml

    from tests.conftest import free_port

    database = f"airflow_celery_{home.name.replace('-', '_').lower()}"
    database_url = fresh_metadata_database(sandbox, database)
    folder = home / "policies"
    folder.mkdir()
    for policy in policies:
        (folder / f"{policy['id']}.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    port, redis_port = free_port(), free_port()
    env = deployment_env(
        sandbox, home=home, database_url=database_url, dags_folder=REPO / "dags", policies_dir=folder, port=port,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        # Celery's results in the metadata database (the provider's default spelled out: db+ and the same URL).
        AIRFLOW__CELERY__RESULT_BACKEND="db+" + database_url.replace("+psycopg2", ""),
        # Only the test's manual-only policies are here: unpaused at once, nothing runs until triggered.
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__FERNET_KEY=os.environ.get("AIRFLOW__CORE__FERNET_KEY", ""),
        AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(16).hex(),  # one secret for the API server and every worker
        AIRFLOW__API__SECRET_KEY=os.urandom(16).hex(),
        **settings,
    )
    cluster = CeleryAirflow(home=home, env=env, url=f"http://localhost:{port}")
    # Debian's redis-server in the foreground, in memory only, on its own port: nothing outlives the fixture.
    cluster.start("redis", [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(home),
                            "--save", "", "--appendonly", "no", "--protected-mode", "yes"])
    try:
        done = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        for name in ("scheduler", "api-server", "dag-processor"):
            cluster.start(name, [AIRFLOW, name])
        for n in range(1, workers + 1):
            cluster.start_worker(f"worker-{n}")
        dead = lambda: [n for n, p in cluster.procs.items() if p.poll() is not None]  # noqa: E731
        cluster.password = wait_until_healthy(cluster.url, home, alive=lambda: not dead(), logs=lambda: "\n".join(
            cluster.log(n)[-2000:] for n in dead() or ["api-server"]))
        # airflow_settings.yaml's pool, through the API (what `airflow pools import` would do, without its start-up).
        settings = yaml.safe_load((REPO / "airflow_settings.yaml").read_text())["airflow"]
        for pool in settings["pools"]:
            made = cluster.api("POST", "/pools", json={"name": pool["pool_name"], "slots": pool["pool_slot"],
                                                       "description": pool["pool_description"]})
            assert made.status_code == 201, made.text
    except BaseException:
        stop_celery_airflow(cluster)  # nothing started here outlives a failed start
        raise
    return cluster


def stop_celery_airflow(cluster: CeleryAirflow) -> None:
    """Stop every process (redis last) and drop the metadata database."""
    import psycopg

    # All at once (each takes a few seconds to shut down); redis once no worker or scheduler uses it.
    cluster.stop(*[n for n in cluster.procs if n != "redis"], timeout=15)
    if "redis" in cluster.procs:
        cluster.stop("redis")
    url = cluster.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")
    base, database = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    shutil.rmtree(cluster.home, ignore_errors=True)
