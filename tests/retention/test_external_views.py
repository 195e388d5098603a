"""Views for Salesforce External Objects, as Privacy Center's documentation recommends them ("Heroku + Heroku
Connect", https://help.salesforce.com/s/articleView?id=xcloud.heroku_connect.htm: External Objects only on the
cache tables, the subset chosen for retention): the extract step keeps one view per policy in
``retention_external``, showing the records the policy settled, their retained fields and their Salesforce Id and
nothing else; the ``retention_external`` role reads those views and Postgres refuses it everything else."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import errors

from tests.conftest import REPO

POLICY_ID = "external_view_check"
TABLE = "external_view_check"


@pytest.fixture(scope="module")
def extracted(sandbox, airflow_db):
    """The extract step run once for a policy of this module (its own cache table): the view is made on the way."""
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import load_policy
    from retention.steps.extract import extract
    from retention.steps.run import make_run, release

    source = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml")
    policy = source.model_copy(update={"id": POLICY_ID,
                                       "retain": source.retain.model_copy(update={"table": TABLE})})
    when = dt.datetime(2026, 6, 3, 3, tzinfo=dt.UTC)
    run = make_run(policy, logical_date=when, run_after=when, dag_run_id="manual__external_views", params={})
    store = RetentionStoreHook()
    extract(store, SalesforceBulk2Hook(), policy, run, still_running=lambda _: False)
    release(store, run)
    with psycopg.connect(sandbox.env["RETENTION_PIPELINE_URL"], autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS retention_staging."{run.run_key}"')
        now = dt.datetime.now(dt.UTC)
        rows = [("003000000000001AAA", POLICY_ID, "done"), ("003000000000002AAA", POLICY_ID, "pending"),
                ("003000000000003AAA", POLICY_ID, "failed"), ("003000000000004AAA", "another_policy", "done")]
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO cache.{TABLE} (sfid, lastname, _retention_policy, _retention_run, "
                            "_retained_at, _action, _action_status) VALUES (%s, 'Kept', %s, 'r', %s, 'delete', %s)",
                            [(sfid, pid, now, status) for sfid, pid, status in rows])
    yield policy
    with psycopg.connect(sandbox.env["RETENTION_STORE_URL"], autocommit=True) as conn:
        conn.execute(f"DROP VIEW IF EXISTS retention_external.{POLICY_ID}")
        conn.execute(f"DROP TABLE IF EXISTS cache.{TABLE}")


def test_the_views_role_reads_the_policys_settled_records_and_only_its_retained_columns(sandbox, extracted):
    with psycopg.connect(sandbox.env["RETENTION_EXTERNAL_URL"], autocommit=True) as conn:
        cur = conn.execute(f"SELECT * FROM retention_external.{POLICY_ID}")
        columns = [d.name for d in cur.description]
        rows = cur.fetchall()
    # The Salesforce Id (the External Object's external id) and the retained fields; no bookkeeping (run, status,
    # errors, Bulk job ids stay in cache).
    assert columns == ["sfid", *sorted(f.lower() for f in extracted.retain.fields)]
    # Only the record this policy settled: pending and failed ones are still whole in the org, and another
    # policy's rows are not this view's.
    assert [(r[0], r[columns.index("lastname")]) for r in rows] == [("003000000000001AAA", "Kept")]


@pytest.mark.parametrize("statement", [
    f"SELECT count(*) FROM cache.{TABLE}",
    "SELECT count(*) FROM retention.runs",
    "SELECT count(*) FROM salesforce.contact",
    "CREATE TABLE retention_external.views_role_was_here (x int)",
    f"DELETE FROM retention_external.{POLICY_ID}",
])
def test_the_views_role_is_refused_everything_else(sandbox, extracted, statement):
    with psycopg.connect(sandbox.env["RETENTION_EXTERNAL_URL"], autocommit=True) as conn, \
            pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_analyst_does_not_read_the_views(sandbox, extracted):
    with psycopg.connect(sandbox.env["RETENTION_ANALYST_URL"], autocommit=True) as conn, \
            pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SELECT count(*) FROM retention_external.{POLICY_ID}")
