"""Least privilege in the store, enforced by Postgres itself: each test connects as the role it is about (the
pipeline's, the analysts', the owner's) to the sandbox's store as ``python -m retention store-setup`` left it, and
shows what that role may do and what Postgres refuses."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import errors

from tests.conftest import REPO

POLICY_ID = "store_setup_check"


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def pipeline(sandbox):
    with connect(sandbox.env["RETENTION_PIPELINE_URL"]) as conn:
        yield conn


@pytest.fixture
def analyst(sandbox):
    with connect(sandbox.env["RETENTION_ANALYST_URL"]) as conn:
        yield conn


@pytest.fixture
def owner(sandbox):
    with connect(sandbox.env["RETENTION_STORE_URL"]) as conn:
        yield conn


def refused(conn: psycopg.Connection, statement: str, params: tuple = ()) -> str:
    """Run ``statement``; it must be refused for lack of privilege. Returns Postgres's message."""
    with pytest.raises(errors.InsufficientPrivilege) as err:
        conn.execute(statement, params)
    return str(err.value)


def a_mirror_table(owner) -> str:
    (name,) = owner.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'salesforce' AND tablename = 'contact'"
                            ).fetchone()
    return f"salesforce.{name}"


def sealed_row(pipeline) -> int:
    """A ledger row appended and sealed by the pipeline role, the one way the product writes one."""
    from retention import evidence

    with pipeline.transaction():
        return evidence.append(pipeline, {
            "policy_id": POLICY_ID, "run_key": f"{POLICY_ID}__2026-06-01", "dag_run_id": "manual__check",
            "policy_hash": "0" * 64, "object": "Contact", "action": "delete", "source": "heroku_connect",
            "cutoff": dt.datetime(2024, 6, 1, tzinfo=dt.UTC), "status": "succeeded",
            "started_at": dt.datetime(2026, 6, 1, 3, tzinfo=dt.UTC)})


def test_the_pipeline_reads_the_mirror_and_postgres_refuses_its_writes_there(pipeline, owner):
    """Invariant 4 by grant: a plain write to Connect's schema would be pushed to Salesforce."""
    table = a_mirror_table(owner)
    pipeline.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert "permission denied" in refused(pipeline, f"UPDATE {table} SET lastname = 'x' WHERE false")
    refused(pipeline, f"DELETE FROM {table} WHERE false")
    refused(pipeline, f"INSERT INTO {table} (sfid) VALUES ('003000000000000AAA')")
    refused(pipeline, f"TRUNCATE {table}")
    refused(pipeline, "CREATE TABLE salesforce.pipeline_was_here (x int)")


def test_the_pipeline_appends_to_the_ledger_but_never_deletes_or_changes_a_sealed_row(pipeline, owner):
    row_id = sealed_row(pipeline)
    (owner_name,) = owner.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'retention' AND "
                                  "tablename = 'runs'").fetchone()
    assert owner_name != "retention_pipeline"  # an owner would bypass every grant below
    assert pipeline.execute("SELECT status FROM retention.runs WHERE id = %s", (row_id,)).fetchone() == ("succeeded",)
    refused(pipeline, "DELETE FROM retention.runs WHERE id = %s", (row_id,))
    refused(pipeline, "TRUNCATE retention.runs")
    refused(pipeline, "DELETE FROM retention.purged_records")
    assert "is sealed" in refused(pipeline, "UPDATE retention.runs SET acted = 1 WHERE id = %s", (row_id,))
    refused(pipeline, "ALTER TABLE retention.runs DISABLE TRIGGER runs_sealed")
    refused(pipeline, "CREATE TABLE retention.pipeline_was_here (x int)")

    # Defence in depth: even with DELETE granted by mistake, the trigger keeps sealed rows.
    owner.execute("GRANT DELETE ON retention.runs TO retention_pipeline")
    try:
        assert "is sealed" in refused(pipeline, "DELETE FROM retention.runs WHERE id = %s", (row_id,))
    finally:
        owner.execute("REVOKE DELETE ON retention.runs FROM retention_pipeline")
    assert pipeline.execute("SELECT count(*) FROM retention.runs WHERE id = %s", (row_id,)).fetchone() == (1,)


def test_the_analyst_reads_cache_tables_the_pipeline_makes_and_nothing_else(pipeline, analyst, owner):
    """The cache table is made by the pipeline after store-setup ran: the analyst reads it through the default
    privileges store-setup set for the pipeline role."""
    pipeline.execute("CREATE TABLE cache.store_setup_check (sfid varchar(18) PRIMARY KEY, lastname text)")
    try:
        pipeline.execute("INSERT INTO cache.store_setup_check VALUES ('003000000000001AAA', 'Kept')")
        pipeline.execute("CREATE TABLE retention_staging.store_setup_check (sfid varchar(18))")
        assert analyst.execute("SELECT lastname FROM cache.store_setup_check").fetchall() == [("Kept",)]
        refused(analyst, "DELETE FROM cache.store_setup_check")
        refused(analyst, "SELECT count(*) FROM retention.runs")
        refused(analyst, "SELECT count(*) FROM retention_staging.store_setup_check")
        refused(analyst, f"SELECT count(*) FROM {a_mirror_table(owner)}")
    finally:
        pipeline.execute("DROP TABLE IF EXISTS cache.store_setup_check, retention_staging.store_setup_check")


def test_a_task_on_a_store_missing_a_grant_stops_before_touching_anything(sandbox, airflow_db, owner):
    """The extract step (the first a DAG run starts) names the missing grant and the admin command, and has claimed
    nothing and staged nothing; store-setup, run again, restores the grant."""
    from retention import store_setup
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import load_policy
    from retention.steps.extract import extract
    from retention.steps.run import make_run

    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml").model_copy(update={"id": POLICY_ID})
    when = dt.datetime(2026, 6, 2, 3, tzinfo=dt.UTC)
    run = make_run(policy, logical_date=when, run_after=when, dag_run_id="manual__grant_check", params={})
    owner.execute("REVOKE INSERT ON retention.runs FROM retention_pipeline")
    try:
        with pytest.raises(store_setup.SetupError) as err:
            extract(RetentionStoreHook(), SalesforceBulk2Hook(), policy, run, still_running=lambda _: True)
    finally:
        with psycopg.connect(sandbox.env["RETENTION_STORE_URL"]) as conn:
            store_setup.apply(conn, store_setup.Roles())
    message = str(err.value)
    assert "role retention_pipeline" in message and "INSERT on table retention.runs" in message
    assert "python -m retention store-setup" in message
    assert owner.execute("SELECT count(*) FROM retention.active_runs WHERE policy_id = %s",
                         (POLICY_ID,)).fetchone() == (0,)
    assert owner.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'retention_staging' AND tablename "
                         "LIKE %s", (f"{POLICY_ID}%",)).fetchone() == (0,)
    with RetentionStoreHook().connect() as conn:
        assert store_setup.missing(conn) == []


def test_setup_without_a_role_it_may_not_create_says_how_to_make_it(owner, sandbox):
    """The store's owner (as on Heroku Postgres) may not create roles: a missing one is named, with the Heroku
    command that makes it, and nothing is applied."""
    from retention import store_setup

    with psycopg.connect(sandbox.env["RETENTION_STORE_URL"]) as conn, pytest.raises(store_setup.SetupError) as err:
        store_setup.apply(conn, store_setup.Roles(pipeline="retention_nobody"))
    assert "heroku pg:credentials:create --name retention_nobody" in str(err.value)
    assert owner.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'retention_nobody'").fetchone() == (0,)


def test_print_gives_the_sql_for_heroku_postgres(capsys):
    from retention.__main__ import main

    assert main(["store-setup", "--print"]) == 0
    text = capsys.readouterr().out
    assert "heroku pg:credentials:create --name retention_pipeline" in text
    assert "CREATE TABLE IF NOT EXISTS retention.runs" in text
    assert "GRANT SELECT, INSERT, UPDATE ON retention.runs TO retention_pipeline;" in text
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA salesforce TO retention_pipeline;" in text
    assert "ALTER DEFAULT PRIVILEGES FOR ROLE retention_pipeline IN SCHEMA cache GRANT SELECT ON TABLES TO " \
           "retention_analyst;" in text
    grants_to_pipeline = [line for line in text.splitlines() if line.startswith("GRANT") and "retention_pipeline;"
                          in line and "retention." in line]
    assert grants_to_pipeline and not any("DELETE" in line and "retention.runs" in line for line in grants_to_pipeline)
