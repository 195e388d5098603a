"""The package as a deployment installs it: a wheel built from this checkout, installed in a fresh virtualenv with
no source on the import path, runs the project's ``dags/`` and ``include/policies/`` against the sandbox.

The fresh virtualenv borrows the shared venv's third-party packages (Airflow and the rest) through a ``.pth`` path
line, so nothing is downloaded. That path is a folder of symlinks to the shared site-packages without this project's
own editable install (its ``__editable__`` path file and its dist-info): the only ``retention`` the new venv can
import, and the only ``salesforce-retention`` distribution it can see, is the wheel's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from retention.policy import load_policies
from tests.conftest import REPO
from tests.policy_support import ACTIVE_HOLDS, INACTIVE_CONTACTS, org_rows, policy_world, store_rows

# A logical date no other module runs inactive_contacts on, so its ledger row is this test's alone.
LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=5, minute=43, second=0, microsecond=0) - dt.timedelta(days=1)
DAG_ID = "retention__inactive_contacts"
# What a deployment never gets from the checkout: the package comes from the wheel.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".sandbox",
                                    ".airflow", ".pytest_cache", ".ruff_cache", ".benchmarks")

# Run by the new venv's python with the Airflow project as cwd and AIRFLOW_HOME (as in an Astro image): where the
# package and its data come from, the provider registration, the DagBag of dags/, and one policy run.
DEPLOYMENT_CHECK = """
import json, logging, sys
from importlib.metadata import distributions
from importlib.resources import files

out, dag_id, logical_date = sys.argv[1], sys.argv[2], sys.argv[3]
warnings = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warnings.append(f"{record.name}: {record.getMessage()}")
logging.getLogger("airflow.providers_manager").addHandler(handler)

import retention
from airflow.providers_manager import ProvidersManager
from retention.hooks.store import SQL_DIR

manager = ProvidersManager()
ui = {m.connection_type: m for m in manager.iter_connection_type_hook_ui_metadata()}
report = {
    "retention_file": retention.__file__,
    "sql_dir": str(SQL_DIR),
    "sql_files": sorted(p.name for p in SQL_DIR.iterdir()),
    "distributions": [str(d.locate_file("")) for d in distributions() if d.name == "salesforce-retention"],
    "provider_version": manager.providers["salesforce-retention"].version,
    "heroku_connect_hook": ui["heroku_connect"].hook_class_name if "heroku_connect" in ui else None,
    "provider_warnings": warnings,
}

import datetime as dt
from airflow.configuration import conf
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
report["dags_folder"] = conf.get("core", "dags_folder")
report["import_errors"] = {str(k): str(v) for k, v in bag.import_errors.items()}
report["dag_ids"] = sorted(bag.dag_ids)
report["retention_file_after_parse"] = sys.modules["retention"].__file__
run = bag.get_dag(dag_id).test(logical_date=dt.datetime.fromisoformat(logical_date),
                               run_conf={"dry_run": False, "cutoff": None})
report["run_state"] = str(run.state)
report["task_states"] = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
with open(out, "w") as f:
    json.dump(report, f)
"""


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(tmp: Path) -> Path:
    """``pip wheel`` on a copy of the checkout, so the build leaves nothing (build/, egg-info) behind in it."""
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_COPIED, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(src)],
        timeout=300)
    (wheel,) = (tmp / "dist").glob("salesforce_retention-*.whl")
    return wheel


def shared_packages_without_this_project(tmp: Path) -> Path:
    """The shared venv's site-packages as symlinks, minus the editable install of this project."""
    folder = tmp / "shared-site-packages"
    folder.mkdir()
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site).iterdir():
            if entry.name.startswith(("salesforce_retention", "__editable__", "retention")) \
                    or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


def clean_venv(tmp: Path) -> Path:
    """``python -m venv`` whose site-packages reaches the shared third-party packages through one path line."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "shared.pth").write_text(f"{shared_packages_without_this_project(tmp)}\n")
    return python


def deployment(tmp: Path) -> Path:
    """An Airflow project as a deployment holds it: dags/, include/policies/ and plugins/ without the package."""
    project = tmp / "project"
    shutil.copytree(REPO / "dags", project / "dags", ignore=NOT_COPIED)
    shutil.copytree(REPO / "include" / "policies", project / "include" / "policies")
    # Not the package, nor the metadata an editable install of the checkout leaves beside it.
    shutil.copytree(REPO / "plugins", project / "plugins",
                    ignore=shutil.ignore_patterns("retention", "__pycache__", "*.egg-info"))
    return project


def clean_env(sandbox, project: Path) -> dict[str, str]:
    """The sandbox's connections and the session's Airflow database; no PYTHONPATH, no policies setting."""
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "TMPDIR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                    "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__FERNET_KEY")
           or k.startswith("AIRFLOW_CONN_")}
    env.update({k: v for k, v in sandbox.env.items() if k.startswith(("AIRFLOW_CONN_", "REQUESTS_CA_BUNDLE"))})
    env["AIRFLOW_HOME"] = str(project)  # as in an Astro image: dags/ and plugins/ are found under it
    return env


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    # Contacts of this module's own, eligible at its cutoff whichever modules ran inactive_contacts before.
    with policy_world(sandbox, contacts=120, seed=2027):
        yield sandbox


def test_the_wheel_runs_the_projects_dags_against_the_sandbox(world, tmp_path):
    sandbox = world
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"retention/sql/{p.name}" for p in (REPO / "plugins" / "retention" / "sql").glob("*.sql")} <= set(names)
    assert "retention/hooks/store.py" in names
    assert not [n for n in names if n.startswith(("tests/", "sandbox/", "dags/", "include/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "provider_info = retention.provider:get_provider_info" in zipfile.ZipFile(wheel).read(entry_points).decode()

    python = clean_venv(tmp_path)
    project = deployment(tmp_path)
    env = clean_env(sandbox, project)
    before = subprocess.run([str(python), "-c", "import airflow, retention"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert before.returncode != 0 and "No module named 'retention'" in before.stderr, before.stderr[-2000:]

    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], env=env,
        cwd=project, timeout=120)

    cutoff = LOGICAL_DATE - dt.timedelta(days=730)
    held = {r["referencerecordid"] for r in org_rows(sandbox, ACTIVE_HOLDS)}
    expected = {r["id"] for r in org_rows(sandbox, INACTIVE_CONTACTS, (cutoff,)) if r["id"] not in held}
    assert len(expected) > 5
    script = tmp_path / "deployment_check.py"
    script.write_text(DEPLOYMENT_CHECK)
    out = tmp_path / "report.json"
    done = subprocess.run([str(python), str(script), str(out), DAG_ID, LOGICAL_DATE.isoformat()], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    # The package, its SQL and its one distribution come from the new venv, never from the checkout.
    venv = python.parent.parent
    for key in ("retention_file", "retention_file_after_parse", "sql_dir"):
        assert Path(report[key]).is_relative_to(venv), (key, report[key])
    assert report["sql_files"] == sorted(p.name for p in (REPO / "plugins" / "retention" / "sql").glob("*.sql"))
    assert len(report["distributions"]) == 1 and Path(report["distributions"][0]).is_relative_to(venv)
    assert report["provider_version"] == "0.1.0"
    assert report["heroku_connect_hook"] == "retention.hooks.heroku_connect.HerokuConnectHook"
    assert report["provider_warnings"] == []

    # Every policy of include/policies is a DAG of dags/, found beside the dags folder with no setting.
    assert report["dags_folder"] == str(project / "dags")
    assert report["import_errors"] == {}
    policies, errors = load_policies(REPO / "include" / "policies")
    assert policies and not errors
    assert {p.dag_id for p in policies} <= set(report["dag_ids"])
    assert not [d for d in report["dag_ids"] if d.startswith("retention__broken__")]

    # One policy end to end: the store's DDL applied from the wheel, records retained, deleted, ledger written.
    assert report["run_state"] == "success", report["task_states"]
    assert set(report["task_states"].values()) == {"success"}, report["task_states"]
    (row,) = store_rows(sandbox, "SELECT * FROM retention.runs WHERE run_key = %s",
                        (f"inactive_contacts__{LOGICAL_DATE:%Y%m%dT%H%M%S}",))
    assert row["status"] == "succeeded" and row["action"] == "delete" and row["cutoff"] == cutoff
    assert (row["eligible"], row["retained"], row["acted"], row["failed"]) == (
        len(expected), len(expected), len(expected), 0)
    after = org_rows(sandbox, "SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)", (list(expected),))
    assert len(after) == len(expected) and all(r["isdeleted"] for r in after)
    retained = store_rows(sandbox, "SELECT sfid FROM cache.contact WHERE _retention_run = %s", (row["run_key"],))
    assert {r["sfid"] for r in retained} == expected
