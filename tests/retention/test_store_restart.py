"""The store's Postgres restarted in the middle of a run, for real (``pg_ctl stop -m fast`` then start), on a server
of its own: the sandbox's server also holds Airflow's database and the org, which must stay up.

The restart is injected where a task holds a store connection it opened before the server went away: the task's
next statement meets a dead connection and fails, and Airflow's retry carries on. Once right after load_to_cache
committed, as validate_row_counts starts; once inside delete_or_mask, after the Bulk job deleted the records in
Salesforce and before their outcomes were recorded (the retry must collect that job, not send the records again);
once inside confirm_and_report, after the ledger row was committed and before staging is dropped (the retry must not
write a second row). The run still ends succeeded: each record retained once, deleted once, one ledger row, no
staging table or policy lock left behind."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil

import pytest

from tests.conftest import free_port, shared_tmp
from tests.dags.store_restart_dags import LAST_NAME
from tests.policy_support import org_rows, policy_world

# Contacts made now; with older_than_days 30, a logical date 60 days ahead makes them eligible.
LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) + dt.timedelta(days=60)
RUN_KEY = f"restart_contacts__{LOGICAL_DATE:%Y%m%dT%H%M%S}"


class StoreServer:
    """An embedded Postgres holding only the retention store, restartable under a connection the product holds."""

    def __init__(self):
        from sandbox import postgres

        self.folder, self.port = shared_tmp("retention-store-restart-"), free_port()
        self.pg = postgres.start(self.folder, self.port)
        postgres.ensure_databases(self.pg, (postgres.STORE,))
        self.url = self.pg.store_url()
        self.restarts: list[str] = []
        self.armed: str | None = None

    def restart(self) -> None:
        from sandbox import postgres

        assert postgres.stop(self.folder)
        postgres.start(self.folder, self.port)

    def connect(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def close(self) -> None:
        from sandbox import postgres

        postgres.stop(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def store(sandbox, airflow_db):
    server = StoreServer()
    yield server
    server.close()


@pytest.fixture
def world(sandbox, store, monkeypatch):
    """The retention_store connection pointed at the store's own server (the sandbox's exported connection, the
    pipeline role's, with another port), set up by ``python -m retention store-setup`` as its owner, as a deployment
    sets up its store."""
    from sandbox.__main__ import setup_store

    setup_store(store.pg)
    conn = json.loads(sandbox.env["AIRFLOW_CONN_RETENTION_STORE"])
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_STORE", json.dumps({**conn, "port": store.port}))
    with policy_world(sandbox):
        yield sandbox


@pytest.fixture
def restarts(store, monkeypatch):
    """``arm(module, name, label)``: when ``module.name`` is next called, the first store connection it opens is
    handed over only after the server restarted, so its first statement meets a connection the server dropped, as
    when the store goes away mid-task. Each label fires once; ``store.restarts`` lists them in order."""
    from retention.hooks.store import RetentionStoreHook

    real_connect = RetentionStoreHook.connect

    @contextlib.contextmanager
    def connect(hook, *, autocommit: bool = False):
        with real_connect(hook, autocommit=autocommit) as conn:
            if store.armed:
                store.restarts.append(store.armed)
                store.armed = None
                store.restart()
            yield conn

    def arm(module, name: str, label: str) -> None:
        real = getattr(module, name)

        def armed_call(*args, **kwargs):
            if label not in store.restarts:
                store.armed = label
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, armed_call)

    monkeypatch.setattr(RetentionStoreHook, "connect", connect)
    yield arm
    store.armed = None


def test_store_restarts_in_validate_act_and_confirm_lose_and_repeat_nothing(world, store, restarts):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    from retention.steps import act, confirm, validate
    from tests.dags import store_restart_dags

    sandbox = world
    sf = SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
    ids = sorted(sf.Contact.create({"LastName": f"{LAST_NAME} {n}", "Email": f"r{n}@restart.example"})["id"]
                 for n in range(8))
    with sandbox.org_conn() as conn:
        started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    restarts(validate, "validate", "before validate")
    restarts(act, "record_outcomes", "during act, before the outcomes")
    restarts(confirm, "drop_staging", "after the ledger row")

    run = store_restart_dags.retention__restart_contacts.test(
        logical_date=LOGICAL_DATE, run_conf={"dry_run": False, "cutoff": None})
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    states = {t: ti.state for t, ti in tis.items()}

    assert store.restarts == ["before validate", "during act, before the outcomes", "after the ledger row"]
    assert run.state == "success", states
    # Each restart failed the task it hit, and Airflow's retry carried on.
    assert {t: ti.try_number for t, ti in tis.items()} == {
        "extract": 1, "subset": 1, "load_to_cache": 1, "validate_row_counts": 2, "delete_or_mask": 2,
        "verify_in_salesforce": 1, "confirm_and_report": 2}

    with store.connect() as conn:
        cached = conn.execute("SELECT sfid, _retention_run, _action_status FROM cache.restart_contacts "
                              "ORDER BY sfid").fetchall()
        ledger = conn.execute("SELECT status, eligible, retained, acted FROM retention.runs WHERE run_key = %s",
                              (RUN_KEY,)).fetchall()
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'retention_staging'").fetchone()[0]
        locks = conn.execute("SELECT count(*) FROM retention.active_runs").fetchone()[0]
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%'")}
    assert "salesforce" not in schemas and {"cache", "retention", "retention_staging"} <= schemas  # no mirror
    assert cached == [(i, RUN_KEY, "done") for i in ids]  # retained once each
    assert ledger == [("succeeded", 8, 8, 8)]
    assert left == 0 and locks == 0
    deleted = org_rows(sandbox, "SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)", (ids,))
    assert {r["id"]: r["isdeleted"] for r in deleted} == dict.fromkeys(ids, True)
    # Acted on once: one delete job carried them, each record once (the retry collected it, sent nothing again).
    jobs = org_rows(sandbox, """SELECT trim(j.id) AS id, j.operation, trim(r.record_id) AS record_id FROM bulk.jobs j
                                JOIN bulk.rows r ON r.job_id = j.id WHERE j.kind = 'ingest' AND j.object = 'Contact'
                                AND j.created_at >= %s AND trim(r.record_id) = ANY(%s)""", (started, ids))
    assert sorted(r["record_id"] for r in jobs) == ids
    assert {(r["id"], r["operation"]) for r in jobs} == {(jobs[0]["id"], "delete")}
