"""Shared fixtures: one real sandbox (embedded Postgres, the org over HTTPS, Connect API and sync loop)
for the whole test session, started and stopped through the same CLI a user runs."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Airflow reads its configuration once, at first import: point it at a private home and at the
# sandbox's Postgres before any test imports it, so a developer's own ~/airflow is never touched.
PORTS = {"SANDBOX_PG_PORT": free_port(), "SANDBOX_SF_PORT": free_port(), "SANDBOX_CONNECT_PORT": free_port()}
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
SUITE_POLL_INTERVAL = "0.05"
# What the suite's Airflow deployments (standalone, Celery) set besides their own settings: the Bulk status checks
# above, and a scheduler that idles 0.2 s between loops rather than 1 s, so that a task's successor starts within a
# fifth of a second of it (the standalone module alone runs about twenty DAG runs of seven tasks one after another).
SUITE_DEPLOYMENT = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                    "AIRFLOW__RETENTION__BULK_POLL_INTERVAL": SUITE_POLL_INTERVAL}
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
        f"postgresql+psycopg2://postgres@127.0.0.1:{PORTS['SANDBOX_PG_PORT']}/airflow",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags"),
    # The policies sit beside dags/, not beside this dags folder: name them.
    "AIRFLOW__RETENTION__POLICIES_DIR": str(REPO / "include" / "policies"),
    # plugins/ as Airflow's plugins folder, as in an Astro project: it holds no plugin (the policies' timetables
    # are Airflow's own), and plugins/.airflowignore keeps the package out of the plugin scan.
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
    # One key for this process and the Airflow CLI processes the tests start (`airflow connections import`
    # encrypts what this process later reads).
    "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    # The sandbox finishes a small Bulk job within milliseconds: check it after 0.05 s rather than the shipped 0.5 s,
    # or the suite's few hundred runs each wait about 1.5 s for nothing.
    "AIRFLOW__RETENTION__BULK_POLL_INTERVAL": SUITE_POLL_INTERVAL,
})


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def run_retention_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m retention ...`` as a user runs it, on this checkout's ``plugins/``."""
    path = os.pathsep.join(filter(None, (str(REPO / "plugins"), env.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, "-m", "retention", *args], cwd=REPO, env={**env, "PYTHONPATH": path}, capture_output=True,
        text=True, timeout=timeout,
    )


@dataclass
class Sandbox:
    env: dict[str, str]

    @property
    def instance_url(self) -> str:
        return self.env["SALESFORCE_INSTANCE_URL"]

    @property
    def ca(self) -> str:
        return self.env["REQUESTS_CA_BUNDLE"]

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run_cli(list(args), self.env, timeout)

    def org_conn(self):
        import psycopg

        return psycopg.connect(self.env["SANDBOX_ORG_URL"], autocommit=True)

    def store_conn(self):
        import psycopg

        return psycopg.connect(self.env["RETENTION_STORE_URL"], autocommit=True)

    @contextlib.contextmanager
    def org_settings(self, **changes):
        """Change the org's licences, settings or the API user's permissions for the block (through the admin
        endpoint, as `/__sandbox/org` takes them); the org is reset to its start afterwards."""
        import requests

        url = f"{self.instance_url}/__sandbox/org"
        r = requests.post(url, json=changes, verify=self.ca, timeout=10)
        assert r.status_code == 200, r.text
        try:
            yield
        finally:
            requests.post(url, json={"reset": True}, verify=self.ca, timeout=10).raise_for_status()

    @contextlib.contextmanager
    def fault(self, kind: str, **options):
        """Switch a fault on for the block, through the admin endpoint the CLI uses."""
        import requests

        url = f"{self.instance_url}/__sandbox/faults"
        r = requests.post(url, json={"kind": kind, **options}, verify=self.ca, timeout=10)
        assert r.status_code == 200, r.text
        try:
            yield
        finally:
            requests.delete(url, verify=self.ca, timeout=10)


def shared_tmp(prefix: str) -> Path:
    """A folder the embedded Postgres can reach when run as root: it runs as the unprivileged user
    'pgserver', and pytest keeps its own temporary folders private (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class ConnectApi:
    """The sandbox's Heroku Connect API v3, as a test drives it (over HTTPS, with the token), and its
    discovery service (``discovery``: the same server, as hc-central.heroku.com)."""

    def __init__(self, sandbox: Sandbox):
        env = sandbox.env
        self.base = env["HEROKU_CONNECT_API_URL"]
        self.discovery = env["HEROKU_CONNECT_DISCOVERY_URL"]
        self.cid = env["HEROKU_CONNECT_CONNECTION_ID"]
        self.headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
        self.ca = sandbox.ca

    def get(self, path: str, **params):
        import requests

        r = requests.get(f"{self.base}{path}", params=params, headers=self.headers, verify=self.ca, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, url: str, **params):
        import requests

        r = requests.post(url if url.startswith("https:") else f"{self.base}{url}", params=params,
                          headers=self.headers, verify=self.ca, timeout=30)
        assert r.status_code in (200, 202), r.text
        return r

    def put(self, path: str, body: dict):
        import requests

        r = requests.put(f"{self.base}{path}", json=body, headers=self.headers, verify=self.ca, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def mapping(self, object_name: str) -> dict:
        conn = self.get(f"/connections/{self.cid}", deep="true")
        (found,) = [m for m in conn["mappings"] if m["object_name"] == object_name]
        return found

    def edit_mapping(self, object_name: str, **config) -> dict:
        """``PUT /mappings/{id}`` with ``{"config": config}`` (fields as a list of names here)."""
        if "fields" in config:
            config["fields"] = {name: {} for name in config["fields"]}
        return self.put(f"/mappings/{self.mapping(object_name)['id']}", {"config": config})

    @contextlib.contextmanager
    def polling_every(self, object_name: str, seconds: float):
        """Set the mapping's sf_polling_seconds for the block (Connect's default is 600), then restore it."""
        before = self.mapping(object_name)["config"]["sf_polling_seconds"]
        self.edit_mapping(object_name, sf_polling_seconds=seconds)
        try:
            yield
        finally:
            self.edit_mapping(object_name, sf_polling_seconds=before)

    def pause(self):
        self.post(f"/connections/{self.cid}/actions/pause")

    def resume(self):
        self.post(f"/connections/{self.cid}/actions/resume")

    def force(self, state: str | None):
        """Make the API report a connection state (None: the real one again)."""
        self.post(self.discovery + "/__sandbox/state", **({"state": state} if state else {}))


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    home = shared_tmp("retention-sandbox-")
    env = {
        **os.environ,
        "SANDBOX_HOME": str(home),
        **{k: str(v) for k, v in PORTS.items()},
        "SANDBOX_SYNC_INTERVAL": "0.5",
    }
    up = run_cli(["up"], env)
    if up.returncode != 0:
        log = (home / "sandbox.log").read_text() if (home / "sandbox.log").exists() else ""
        run_cli(["down"], env)
        pytest.fail(f"sandbox up failed:\n{up.stdout}\n{up.stderr}\n{log[-4000:]}")
    exported = run_cli(["env"], env)
    assert exported.returncode == 0, exported.stderr
    for line in exported.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    # No Heroku user is on a Connect add-on's access list until added once, as a data team does.
    registered = run_retention_cli(["connect-register"], env)
    if registered.returncode != 0:
        run_cli(["down"], env)
        pytest.fail(f"python -m retention connect-register failed:\n{registered.stdout}\n{registered.stderr}")
    saved = dict(os.environ)
    # Processes and libraries under test (requests, Airflow's env-var connections) read these.
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW_CONN_", "REQUESTS_CA_BUNDLE"))})
    yield Sandbox(env)
    os.environ.clear()
    os.environ.update(saved)
    down = run_cli(["down"], env)
    assert down.returncode == 0, down.stderr
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db(sandbox) -> Path:
    """Airflow's metadata database, migrated in the sandbox's Postgres; yields AIRFLOW_HOME."""
    out = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=sandbox.env | {
        k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield AIRFLOW_HOME
    from airflow import settings

    settings.dispose_orm()  # before the sandbox's Postgres stops under it
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def sf(sandbox):
    """simple-salesforce as the Airflow SalesforceHook builds it from the exported connection."""
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    return SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
