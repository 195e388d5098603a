"""What every Airflow deployment the tests and benchmarks start has in common: its own metadata database (a live
scheduler must not see the DAG runs other tests make with ``dag.test()``), the sandbox's connections, this
checkout's plugins and DAG code, free ports, and quick parsing and heartbeats.

Used by ``tests/test_airflow_standalone.py`` and ``bench/deployment.py`` (``airflow standalone``) and
``tests/celery_cluster.py`` (the CeleryExecutor's processes started one by one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# The sandbox's variables a deployment needs: its connections, its CA bundle, the org and Connect settings.
SANDBOX_PREFIXES = ("AIRFLOW_CONN_", "REQUESTS_CA", "SANDBOX", "SALESFORCE", "RETENTION", "HEROKU")


def fresh_metadata_database(sandbox, name: str) -> str:
    """Drop and create database ``name`` on the sandbox's Postgres; returns its SQLAlchemy URL."""
    import psycopg

    base = sandbox.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[0]
    with psycopg.connect(base.replace("+psycopg2", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def deployment_env(sandbox, *, home: Path, database_url: str, dags_folder: Path, policies_dir: Path, port: int,
                   **settings: str) -> dict[str, str]:
    """The environment of every process of one deployment: this process's without its Airflow settings, the
    sandbox's connections, then ``settings`` (``AIRFLOW__...`` names) over the common ones."""
    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({k: v for k, v in sandbox.env.items() if k.startswith(SANDBOX_PREFIXES)})
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__RETENTION__POLICIES_DIR": str(policies_dir),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        # The product (and the benchmarks' usual way) from this checkout, whatever the venv's editable install
        # points at.
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        **settings,
    })
    return env


def wait_until_healthy(url: str, home: Path, *, alive, logs, timeout: float = 180) -> str:
    """Until the API server answers its health check and the simple auth manager has written the admin's password;
    returns that password. ``alive()`` is false once a process of the deployment has died, and ``logs()`` then
    says why."""
    import requests

    deadline = time.monotonic() + timeout
    passwords = home / "simple_auth_manager_passwords.json.generated"
    while True:
        try:
            if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200 and passwords.exists():
                return json.loads(passwords.read_text())["admin"]
        except requests.RequestException:
            pass
        assert alive(), logs()[-3000:]
        assert time.monotonic() < deadline, f"the deployment did not come up in {timeout}s:\n{logs()[-3000:]}"
        time.sleep(1)
