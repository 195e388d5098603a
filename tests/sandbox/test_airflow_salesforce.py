"""The stock Airflow Salesforce provider against the sandbox, in real DAG runs (``dag.test()``) with
Airflow's metadata in the sandbox's Postgres and the connection coming from the environment only."""

from __future__ import annotations


def _contacts(sf, last_name: str, count: int) -> list[str]:
    records = [{"attributes": {"type": "Contact"}, "LastName": last_name} for _ in range(count)]
    out = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    return [r["id"] for r in out]


def test_salesforce_bulk_operator_runs_a_delete_job_in_a_dag_run(sandbox, airflow_db, sf):
    from tests.dags.sandbox_provider_dags import bulk_delete

    doomed = _contacts(sf, "BulkOperator", 5)
    kept = _contacts(sf, "BulkOperatorKept", 2)
    run = bulk_delete.test()
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"find_contacts": "success", "delete_contacts": "success"}

    live = sf.query("SELECT Id FROM Contact WHERE LastName IN ('BulkOperator', 'BulkOperatorKept')")
    assert sorted(r["Id"] for r in live["records"]) == sorted(kept)
    binned = sf.query_all("SELECT Id, IsDeleted FROM Contact WHERE LastName = 'BulkOperator'", include_deleted=True)
    assert sorted(r["Id"] for r in binned["records"]) == sorted(doomed)
    assert all(r["IsDeleted"] for r in binned["records"])
