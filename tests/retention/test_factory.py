"""The DAG factory: one DAG per policy with the documented shape; a broken policy file is an import
error naming the file, the key and the reason, and the other policies still load; parsing stays cheap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "retention_policies.py"
EXAMPLES = sorted((REPO / "include" / "policies").glob("*.yaml"))
PIPELINE = ["extract", "subset", "load_to_cache", "validate_row_counts", "delete_or_mask", "verify_in_salesforce",
            "confirm_and_report"]


def bag(folder: Path, monkeypatch):
    """A DagBag of the DAG file over ``folder``'s policies (bagging records import errors in the metadata DB)."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW__RETENTION__POLICIES_DIR", str(folder))
    return DagBag(dag_folder=str(DAG_FILE), safe_mode=True)


def test_every_example_policy_is_a_dag_with_the_pipeline_shape(airflow_db, monkeypatch):
    from retention.policy import load_policy

    dags = bag(REPO / "include" / "policies", monkeypatch)
    assert not dags.import_errors
    assert len(EXAMPLES) == 4
    # One DAG per policy, and the store purge DAG (two examples set retain.keep_days).
    assert set(dags.dag_ids) == {load_policy(p).dag_id for p in EXAMPLES} | {"retention_store_purge"}
    for path in EXAMPLES:
        policy = load_policy(path)
        dag = dags.get_dag(policy.dag_id)
        order = (["wait_for_connect_sync"] if policy.source == "heroku_connect" else []) + PIPELINE
        assert [t.task_id for t in dag.topological_sort()] == order
        assert dag.max_active_runs == 1 and dag.catchup == policy.catchup
        assert {"retention", policy.action, policy.object} <= set(dag.tags)
        assert set(dag.params) == {"dry_run", "cutoff"} and dag.params["dry_run"] is False
        assert policy.description in dag.doc_md and policy.retain.table in dag.doc_md
        assert "retries" not in dag.default_args  # [core] default_task_retries (tests/retention/test_config.py)
        for task in dag.tasks:
            assert task.owner == policy.owner and task.retry_exponential_backoff == 2.0
        for task_id in ("extract", "validate_row_counts", "delete_or_mask", "verify_in_salesforce",
                        "confirm_and_report"):
            assert dag.get_task(task_id).pool == "salesforce_api"
        # The act and its read-back are mapped over validate's chunks (dynamic task mapping); the rest are not.
        mapped = {t.task_id for t in dag.tasks if t.is_mapped}
        assert mapped == {"delete_or_mask", "verify_in_salesforce"}
        for task_id in mapped:
            assert dag.get_task(task_id).expand_input.value["chunk"].operator.task_id == "validate_row_counts"


def test_a_broken_policy_is_an_import_error_naming_file_key_and_reason(airflow_db, tmp_path, monkeypatch):
    shutil.copy(REPO / "include" / "policies" / "inactive_contacts.yaml", tmp_path)
    text = (REPO / "include" / "policies" / "stale_leads_mask.yaml").read_text()
    (tmp_path / "broken_leads.yaml").write_text(text.replace("Email: email_domain", "Email: domain_only"))
    dags = bag(tmp_path, monkeypatch)
    assert "retention__inactive_contacts" in dags.dag_ids
    assert "retention__stale_leads_mask" not in dags.dag_ids
    (error,) = dags.import_errors.values()
    assert "broken_leads.yaml" in error and "retain.fields.Email" in error and "unknown transform" in error


def test_broken_global_alert_settings_are_an_import_error_and_the_policies_still_load(airflow_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW__RETENTION__ALERT_EMAILS", "privacy-team@example.com, privacy team")
    dags = bag(REPO / "include" / "policies", monkeypatch)
    assert {"retention__inactive_contacts", "retention__stale_leads_mask", "retention_store_purge"} <= set(
        dags.dag_ids)
    (error,) = dags.import_errors.values()
    assert "[retention] alert_emails: not an e-mail address: privacy team" in error
    # Policies without their own alerts: key get none until it is fixed (they are not silently half-set).
    assert dags.get_dag("retention__inactive_contacts").default_args["on_failure_callback"] == []


def test_parsing_the_dag_file_imports_no_heavy_libraries(tmp_path):
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('great_expectations', 'simple_salesforce', 'pandas', 'psycopg') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(DAG_FILE)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", "PATH": "/usr/bin:/bin",
                              "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent)})
    heavy = [m for m in out.stdout.strip().split(",") if m]
    assert "great_expectations" not in heavy and "simple_salesforce" not in heavy, heavy


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_fits_its_object_in_the_sandbox(path):
    from retention.policy import check_against_describe, load_policy
    from sandbox.objects import get_object

    policy = load_policy(path)
    others = {name: get_object(name).describe("66.0") for name in policy.related_fields()}
    assert check_against_describe(policy, get_object(policy.object).describe("66.0"), others) == []
