"""Benchmarks reuse the test suite's sandbox fixture (a real sandbox started through the CLI), and share one
deployment (``airflow standalone``, each task its own process) and one /proc sampler across modules."""

import json
from pathlib import Path

import pytest

from tests.conftest import *  # noqa: F403

# Each measured run as JSON, beside pytest-benchmark's own files (git-ignored).
RESULTS = Path(__file__).resolve().parent.parent / ".benchmarks" / "runs"


@pytest.fixture(scope="session")
def deployment(sandbox):
    from bench.deployment import Deployment
    from bench.scale import bench_policies

    deployed = Deployment(sandbox, bench_policies())
    yield deployed
    deployed.stop()


@pytest.fixture(scope="session")
def sampler(sandbox):
    from bench.probes import Sampler, parent

    state = json.loads((Path(sandbox.env["SANDBOX_HOME"]) / "state.json").read_text())
    with sandbox.org_conn() as conn:  # a backend's parent is its server
        postmaster = parent(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    running = Sampler(sandbox_pid=state["pid"], postmaster_pid=postmaster).start()
    yield running
    running.stop()
