"""The sandbox CLI on its own home and ports: ``up`` starts everything, ``env`` readies a shell,
``status`` and ``seed`` work, and ``down`` stops exactly what ``up`` started."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox import postgres
from tests.conftest import free_port, run_cli, shared_tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once it has exited.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "SANDBOX_HOME": str(home), "SANDBOX_PG_PORT": str(free_port()),
            "SANDBOX_SF_PORT": str(free_port()), "SANDBOX_CONNECT_PORT": str(free_port()),
            "SANDBOX_SYNC_INTERVAL": "0.3"}


@pytest.fixture
def tmp_path():
    """Postgres runs as an unprivileged user: keep its folders outside pytest's private tmp tree."""
    folder = shared_tmp("retention-cli-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_up_env_seed_status_down(tmp_path):
    env = _env(tmp_path / "home")
    up = run_cli(["up"], env)
    try:
        assert up.returncode == 0, up.stderr
        assert "Salesforce    https://localhost:" in up.stdout and "Connect API" in up.stdout
        state = json.loads((tmp_path / "home" / "state.json").read_text())
        assert _alive(state["pid"]) and state["started_postgres"] is True

        again = run_cli(["up"], env)
        assert again.returncode == 0 and "already running" in again.stdout

        exported = run_cli(["env"], env)
        probe = 'echo "$SALESFORCE_INSTANCE_URL|$REQUESTS_CA_BUNDLE|$AIRFLOW_CONN_SALESFORCE_DEFAULT"'
        shell = subprocess.run(["bash", "-c", exported.stdout + "\n" + probe], capture_output=True, text=True,
                               check=True)
        url, ca, conn = shell.stdout.strip().split("|", 2)
        assert url == f"https://localhost:{env['SANDBOX_SF_PORT']}" and Path(ca).exists()
        assert '"conn_type": "salesforce"' in conn

        seeded = run_cli(["seed", "--contacts", "200"], env)
        assert seeded.returncode == 0 and "200 Contact" in seeded.stdout
        status = run_cli(["status"], env)
        assert status.returncode == 0
        contact_line = next(line for line in status.stdout.splitlines() if line.startswith("Contact "))
        assert contact_line.split()[1] == "200"
    finally:
        down = run_cli(["down"], env)
    assert down.returncode == 0 and "embedded Postgres" in down.stdout
    assert not _alive(state["pid"])
    assert not postgres.is_running(tmp_path / "home" / "postgres")
    assert not (tmp_path / "home" / "state.json").exists()
    assert run_cli(["status"], env).returncode == 3


def test_down_leaves_a_postgres_it_did_not_start(tmp_path):
    env = _env(tmp_path / "home")
    pg_dir = tmp_path / "home" / "postgres"
    postgres.start(pg_dir, int(env["SANDBOX_PG_PORT"]))
    try:
        assert run_cli(["up"], env).returncode == 0
        down = run_cli(["down"], env)
        assert down.returncode == 0 and "embedded Postgres" not in down.stdout
        assert postgres.is_running(pg_dir)
    finally:
        postgres.stop(pg_dir)


def test_env_without_a_running_sandbox_says_how_to_start_it(tmp_path):
    out = run_cli(["env"], _env(tmp_path / "empty"))
    assert out.returncode == 3 and "python -m sandbox up" in out.stderr
