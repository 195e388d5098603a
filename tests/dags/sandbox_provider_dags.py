"""Airflow DAGs that exercise the stock Salesforce provider against the sandbox (used by
tests/sandbox/test_airflow_salesforce.py; Airflow's dags folder points here during the tests)."""

from __future__ import annotations

import datetime as dt

from airflow.providers.salesforce.hooks.salesforce import SalesforceHook
from airflow.providers.salesforce.operators.bulk import SalesforceBulkOperator
from airflow.sdk import DAG, task

with DAG("sandbox_bulk_delete", schedule=None, start_date=dt.datetime(2025, 1, 1), catchup=False) as bulk_delete:

    @task
    def find_contacts(last_name: str) -> list[dict]:
        """The records to delete, read through the hook in the task, as a pipeline would."""
        hook = SalesforceHook(salesforce_conn_id="salesforce_default")
        found = hook.make_query(f"SELECT Id FROM Contact WHERE LastName = '{last_name}'")
        return [{"Id": r["Id"]} for r in found["records"]]

    SalesforceBulkOperator(
        task_id="delete_contacts",
        operation="delete",
        object_name="Contact",
        payload=find_contacts("BulkOperator"),
        salesforce_conn_id="salesforce_default",
    )
