"""A deployment as production runs one, for the benchmarks: ``airflow standalone`` (scheduler with the
LocalExecutor, dag processor, triggerer, API server) on the sandbox, each task in its own process.

It has its own metadata database (``airflow_bench``) and its own dags folder: the product's DAG file
(``dags/retention_policies.py``) over the policies the benchmark writes, and the usual way's DAG
(``bench/usual_way.py``). Set up as ``tests/test_airflow_standalone.py`` does it (``tests/airflow_deployment.py``).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time

import requests

from sandbox.standalone import stop_standalone
from tests.airflow_deployment import AIRFLOW, deployment_env, fresh_metadata_database, wait_until_healthy
from tests.conftest import REPO, free_port, shared_tmp

USUAL_WAY_DAG_FILE = '''"""The usual way (bench/usual_way.py) as an Airflow DAG file of this deployment
(Airflow parses only files that name both "airflow" and "dag")."""

from bench.usual_way import build_dag

dag = build_dag()
'''


class Deployment:
    """``airflow standalone`` started in its own process group; ``stop()`` ends that group."""

    def __init__(self, sandbox, policies: dict[str, str]):
        self.sandbox = sandbox
        self.home = home = shared_tmp("retention-bench-")
        for folder in ("policies", "dags"):
            (home / folder).mkdir()
        for policy_id, text in policies.items():
            (home / "policies" / f"{policy_id}.yaml").write_text(text)
        shutil.copy(REPO / "dags" / "retention_policies.py", home / "dags")
        (home / "dags" / "usual_way.py").write_text(USUAL_WAY_DAG_FILE)
        port = free_port()
        self.env = env = deployment_env(
            sandbox, home=home, database_url=fresh_metadata_database(sandbox, "airflow_bench"),
            dags_folder=home / "dags", policies_dir=home / "policies", port=port,
            AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="True")
        for step in ([AIRFLOW, "db", "migrate"],
                     [sys.executable, "-m", "retention.settings_loader", str(REPO / "airflow_settings.yaml")]):
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        self._log = open(home / "standalone.log", "wb")
        self.proc = subprocess.Popen([AIRFLOW, "standalone"], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://localhost:{port}"
        self.password = wait_until_healthy(self.url, home, alive=lambda: self.proc.poll() is None,
                                           logs=lambda: (home / "standalone.log").read_text())
        self._token: str | None = None

    def stop(self) -> None:
        """End the deployment's process group; its home (logs) is kept when BENCH_KEEP_HOME is set."""
        stop_standalone(self.proc)
        self._log.close()
        if not os.environ.get("BENCH_KEEP_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        if self._token is None:  # one token for the session (it lasts a day): the machine is busy enough
            self._token = requests.post(f"{self.url}/auth/token", json={"username": "admin",
                                        "password": self.password}, timeout=60).json()["access_token"]
        return requests.request(method, f"{self.url}/api/v2{path}", timeout=120,
                                headers={"Authorization": f"Bearer {self._token}"}, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag processor has parsed the DAG, then unpause it (runs of a paused DAG never start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api("GET", f"/dags/{dag_id}").status_code == 200:
                self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
                return
            time.sleep(2)
        raise AssertionError(f"{dag_id} not parsed in {timeout}s: {self.import_errors()}")

    def import_errors(self) -> list:
        return self.api("GET", "/importErrors").json().get("import_errors", [])

    def run(self, dag_id: str, logical_date: dt.datetime, conf: dict | None = None, timeout: float = 7200) -> dict:
        """Trigger a DAG run, wait until it ends; returns the run as the API reports it. An earlier run of the
        same logical date (the same policy measured at another size) is deleted first: one run per date."""
        for earlier in self.api("GET", f"/dags/{dag_id}/dagRuns").json().get("dag_runs", []):
            if earlier.get("logical_date") and dt.datetime.fromisoformat(earlier["logical_date"]) == logical_date:
                self.api("DELETE", f"/dags/{dag_id}/dagRuns/{earlier['dag_run_id']}").raise_for_status()
        made = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date.isoformat(),
                                                                  "conf": conf or {}})
        assert made.status_code == 200, made.text
        run_id = made.json()["dag_run_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run.get("state") in ("success", "failed"):
                return run
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id}: not finished in {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, mapped ones one per map index, as the API lists them."""
        found: list[dict] = []
        while True:
            page = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 100, "offset": len(found)}).json()
            found += page["task_instances"]
            if len(found) >= page["total_entries"] or not page["task_instances"]:
                return found
