"""The usual way, for comparison: the straightforward Airflow approach to the same retention job, written as a
data engineer would from the providers' documentation, with no tuning of our own.

``extract_and_load``: ``SalesforceHook.make_query`` (REST ``query_all``: every record in memory, 2,000 a page)
→ ``SalesforceHook.object_to_df`` (a pandas DataFrame) → the retained fields transformed in pandas →
``PostgresHook.insert_rows`` into a cache-like table (``cache.usual_way_contact``); the Ids go to XCom.
``delete``: ``SalesforceBulkOperator`` (Bulk API 1.0 through simple-salesforce, batches of 10,000) deletes them.

It selects what the benchmark's delete policy selects (bench/scale.py: ``inactive_contacts`` with the bench's
retention period), holds included, so both act on the same records; the benchmark asserts they do.
"""

from __future__ import annotations

import datetime as dt

from bench import org

DAG_ID = "bench_usual_way"
TABLE = "cache.usual_way_contact"
# inactive_contacts' selection in SOQL, with its privacy-hold exclusion written as a semi-join, as one would.
SOQL = ("SELECT Id, LastName, Email, Birthdate, MailingCountry FROM Contact WHERE LastModifiedDate < {cutoff} "
        "AND LeadSource != 'Partner Referral' AND Id NOT IN (SELECT ContactId FROM Case) "
        "AND Id NOT IN (SELECT ReferenceRecordId FROM PrivacyHold WHERE IsActive = true "
        "AND (EndDate = null OR EndDate >= TODAY))")


def build_dag():
    from airflow.providers.salesforce.operators.bulk import SalesforceBulkOperator
    from airflow.sdk import DAG, task

    with DAG(DAG_ID, schedule=None, start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), catchup=False,
             max_active_runs=1, tags=["bench"], doc_md=__doc__) as dag:

        @task
        def extract_and_load(logical_date=None) -> list[dict]:
            from airflow.providers.postgres.hooks.postgres import PostgresHook
            from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

            cutoff = logical_date - dt.timedelta(days=org.OLDER_THAN_DAYS)
            sf = SalesforceHook(salesforce_conn_id="salesforce_default")
            records = sf.make_query(SOQL.format(cutoff=cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")))["records"]
            df = sf.object_to_df(records)  # its columns are the field names in lower case
            df["email_domain"] = df["email"].str.split("@").str[-1]
            df["birth_year"] = df["birthdate"].str[:4]
            pg = PostgresHook(postgres_conn_id="retention_store")
            pg.run(f"CREATE TABLE IF NOT EXISTS {TABLE} (sfid text PRIMARY KEY, lastname text, email_domain text, "
                   "birth_year text, mailingcountry text)")
            columns = ["id", "lastname", "email_domain", "birth_year", "mailingcountry"]
            rows = df[columns].astype(object).where(df[columns].notna(), None).itertuples(index=False, name=None)
            pg.insert_rows(TABLE, rows, target_fields=["sfid", "lastname", "email_domain", "birth_year",
                                                       "mailingcountry"])
            return [{"Id": i} for i in df["id"]]

        SalesforceBulkOperator(task_id="delete", operation="delete", object_name="Contact",
                               payload=extract_and_load(), salesforce_conn_id="salesforce_default")
    return dag
