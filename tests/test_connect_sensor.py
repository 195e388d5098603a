"""ConnectSyncSensor in real DAG runs against the sandbox's Connect API and mirror."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import ConnectApi


@pytest.fixture
def connect(sandbox):
    api = ConnectApi(sandbox)
    yield api
    api.force(None)
    api.resume()


def _ti(run, task_id="wait_for_connect_sync"):
    (ti,) = [t for t in run.get_task_instances() if t.task_id == task_id]
    return ti


@pytest.mark.parametrize("dag_name", ["poke", "reschedule", "deferred"])
def test_sensor_waits_while_the_mirror_is_behind_and_passes_once_synced(sandbox, airflow_db, sf, connect, dag_name):
    from tests.dags import connect_sensor_dags

    dag = getattr(connect_sensor_dags, dag_name)
    connect.pause()
    rid = sf.Contact.create({"LastName": "SensorWait"})["id"]
    resumed_at: list[float] = []

    def resume_later():
        time.sleep(2)
        resumed_at.append(time.time())
        connect.resume()

    thread = threading.Thread(target=resume_later)
    thread.start()
    run = dag.test()
    thread.join()
    ti = _ti(run)
    assert run.state == "success" and ti.state == "success"
    # It cannot have passed before the mirror caught up: success came after the resume.
    assert ti.end_date.timestamp() >= resumed_at[0]
    with sandbox.store_conn() as conn:
        assert conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (rid,)).fetchone()


def test_sensor_fails_at_once_on_a_connection_error_state(sandbox, airflow_db, connect, capsys):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from retention.sensors.connect_sync import check_sync
    from tests.dags import connect_sensor_dags

    connect.force("SYSTEM_ERROR")
    started = time.monotonic()
    run = connect_sensor_dags.poke.test()
    assert run.state == "failed" and _ti(run).state == "failed"
    assert time.monotonic() - started < 30  # failed fast instead of waiting out its 60 s timeout
    with pytest.raises(AirflowFailException, match="connection is in state SYSTEM_ERROR"):
        check_sync("heroku_connect_default", "retention_store", "salesforce", "Contact")


def test_sensor_times_out_with_a_clear_message(sandbox, airflow_db, sf, connect, capsys):
    from tests.dags import connect_sensor_dags

    connect.pause()
    sf.Contact.create({"LastName": "SensorTimeout"})
    run = connect_sensor_dags.short.test()
    assert run.state == "failed"
    out = capsys.readouterr().out
    assert "Heroku Connect did not finish mirroring Contact within 2s" in out
    assert "Not proceeding on a stale mirror" in out


def test_unsettled_writes_in_the_trigger_log_hold_the_sensor(sandbox, airflow_db, sf, connect):
    from retention.sensors.connect_sync import check_sync

    rid = sf.Contact.create({"LastName": "SensorWrites"})["id"]
    deadline = time.monotonic() + 20
    while not check_sync("heroku_connect_default", "retention_store", "salesforce", "Contact")[0]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with sandbox.store_conn() as conn:
        conn.execute("INSERT INTO salesforce._trigger_log (txid, created_at, state, action, table_name, record_id, "
                     "sfid) VALUES (txid_current(), now(), 'NEW', 'UPDATE', 'contact', 1, %s)", (rid,))
        try:
            synced, why = check_sync("heroku_connect_default", "retention_store", "salesforce", "Contact")
            assert not synced and "unsettled writes in salesforce._trigger_log: 1" in why
        finally:
            conn.execute("DELETE FROM salesforce._trigger_log WHERE sfid = %s AND state = 'NEW'", (rid,))
