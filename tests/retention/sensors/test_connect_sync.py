"""ConnectSyncSensor in real DAG runs against the sandbox's Connect API, mirror and org.

The sensor trusts no single signal: Connect's ``DATA_SYNCED`` only says "All rows have been synced since the
last poll" (https://devcenter.heroku.com/articles/mapping-states-reference) and Connect polls every
sf_polling_seconds (https://devcenter.heroku.com/articles/mapping-configuration-options), so the mirror is
also compared with the org (its newest SystemModstamp, its recent deletions) before a run may read it.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import ConnectApi

CHECK = {"heroku_connect_conn_id": "heroku_connect_default", "store_conn_id": "retention_store",
         "salesforce_conn_id": "salesforce_default"}


@pytest.fixture
def connect(sandbox):
    api = ConnectApi(sandbox)
    yield api
    api.force(None)
    api.resume()


def _ti(run, task_id="wait_for_connect_sync"):
    (ti,) = [t for t in run.get_task_instances() if t.task_id == task_id]
    return ti


def check(object_name="Contact", **kwargs):
    from retention.hooks.mirror_freshness import check_mirror

    return check_mirror(object_name, **CHECK, **kwargs)


def wait_until_ready(object_name="Contact", timeout=20):
    deadline = time.monotonic() + timeout
    while not check(object_name)[0]:
        assert time.monotonic() < deadline, check(object_name)[1]
        time.sleep(0.2)


@pytest.mark.parametrize("dag_name", ["poke", "reschedule", "deferred"])
def test_sensor_waits_while_the_mirror_is_behind_and_passes_once_synced(sandbox, airflow_db, sf, connect, dag_name):
    """Paused, Connect does not poll (https://devcenter.heroku.com/articles/managing-heroku-connect-sync-and-connections):
    the sensor waits, in every mode, until the record reached the mirror."""
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
    """SYSTEM_ERROR needs a person (https://devcenter.heroku.com/articles/connection-states-reference)."""
    from retention.hooks.heroku_connect import HerokuConnectError
    from tests.dags import connect_sensor_dags

    connect.force("SYSTEM_ERROR")
    started = time.monotonic()
    run = connect_sensor_dags.poke.test()
    assert run.state == "failed" and _ti(run).state == "failed"
    assert time.monotonic() - started < 30  # failed fast instead of waiting out its 60 s timeout
    with pytest.raises(HerokuConnectError, match="connection is in state SYSTEM_ERROR"):
        check()


def test_sensor_fails_at_once_naming_the_fields_the_mapping_does_not_sync(sandbox, airflow_db, connect, capsys):
    """Connect "syncs only the fields a mapping selects" (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings):
    a run reading an unmapped field would fail on a missing column, so the sensor fails first, naming them."""
    from retention.hooks.heroku_connect import HerokuConnectError
    from tests.dags import connect_sensor_dags

    started = time.monotonic()
    run = connect_sensor_dags.unmapped.test()
    assert run.state == "failed" and _ti(run).state == "failed"
    assert time.monotonic() - started < 30
    expected = ("Heroku Connect mapping Contact does not sync Title, description; add them to the mapping in the "
                "Heroku Connect dashboard (Mappings → Contact → Edit) and wait for it to resync")
    assert expected in capsys.readouterr().out
    with pytest.raises(HerokuConnectError, match="does not sync Title, description;"):
        check(required_fields=["lastname", "EMAIL", "Title", "description"])
    check(required_fields=["lastname", "EMAIL"])  # compared case-insensitively: mapped, so no error


def test_sensor_times_out_with_a_clear_message(sandbox, airflow_db, sf, connect, capsys):
    """A paused connection ("A user manually paused the connection":
    https://devcenter.heroku.com/articles/connection-states-reference) times the sensor out, saying so."""
    from tests.dags import connect_sensor_dags

    connect.pause()
    sf.Contact.create({"LastName": "SensorTimeout"})
    run = connect_sensor_dags.short.test()
    assert run.state == "failed"
    out = capsys.readouterr().out
    assert "Heroku Connect did not finish mirroring Contact within 2s" in out
    assert "Not proceeding on a stale mirror" in out and "connection PAUSED" in out


def test_a_data_synced_mapping_with_a_stale_mirror_holds_the_sensor(sandbox, airflow_db, sf, connect, capsys):
    """With Connect's interval between polls (600 s by default) a mapping stays DATA_SYNCED after the org changed
    ("All rows have been synced since the last poll": https://devcenter.heroku.com/articles/mapping-states-reference).
    The org's newest SystemModstamp (REST query) being newer than the mirror's holds the sensor; once Connect
    polls again it passes."""
    from retention.sensors.connect_sync import ConnectSyncSensor
    from tests.dags import connect_sensor_dags

    rid = sf.Contact.create({"LastName": "Stale", "Email": "stale@example.org"})["id"]
    wait_until_ready()
    sensor = ConnectSyncSensor(task_id="probe", object_name="Contact", **CHECK)
    with connect.polling_every("Contact", 3600):
        sf.Contact.update(rid, {"Email": "changed@example.org"})
        newest = sf.query("SELECT SystemModstamp FROM Contact ORDER BY SystemModstamp DESC LIMIT 1")["records"][0]
        time.sleep(1.5)  # the sandbox's usual polls would have caught it by now
        assert connect.mapping("Contact")["state"] == "DATA_SYNCED"
        ready, why = check()
        assert not ready and why.startswith("mirror behind Salesforce: Contact's newest SystemModstamp is ")
        assert f"{newest['SystemModstamp'][:23]}Z in Salesforce" in why and "DATA_SYNCED" in why
        assert sensor.poke({}) is False
        run = connect_sensor_dags.short.test()
        assert run.state == "failed"
        out = capsys.readouterr().out
        assert "Heroku Connect did not finish mirroring Contact within 2s" in out
        assert "mirror behind Salesforce: Contact's newest SystemModstamp is" in out
    wait_until_ready()
    assert sensor.poke({}) is True
    run = connect_sensor_dags.poke.test()
    assert run.state == "success"


def test_a_record_deleted_in_the_org_but_still_mirrored_holds_the_sensor(sandbox, airflow_db, sf, connect):
    """Connect polls for deletions (POLLING_SF_FOR_DELETES: https://devcenter.heroku.com/articles/mapping-states-reference)
    on its interval; until it has, a record the org deleted (REST getDeleted) is still in the mirror and the
    sensor waits."""
    rid = sf.Contact.create({"LastName": "Deleted"})["id"]
    wait_until_ready()
    with connect.polling_every("Contact", 3600):
        sf.Contact.delete(rid)
        time.sleep(1.5)
        assert connect.mapping("Contact")["state"] == "DATA_SYNCED"
        ready, why = check()
        assert not ready and "records Salesforce deleted in the last 24 h are still in salesforce.contact" in why
        assert rid in why
    wait_until_ready()
    with sandbox.store_conn() as conn:
        assert conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (rid,)).fetchone() is None


def test_unsettled_writes_in_the_trigger_log_hold_the_sensor(sandbox, airflow_db, sf, connect):
    """Writes waiting in _trigger_log (https://devcenter.heroku.com/articles/heroku-connect-trigger-log) mean the
    mirror and the org disagree."""
    rid = sf.Contact.create({"LastName": "SensorWrites"})["id"]
    wait_until_ready()
    with sandbox.store_conn() as conn:
        conn.execute("INSERT INTO salesforce._trigger_log (txid, created_at, state, action, table_name, record_id, "
                     "sfid) VALUES (txid_current(), now(), 'NEW', 'UPDATE', 'contact', 1, %s)", (rid,))
        try:
            ready, why = check()
            assert not ready and "unsettled writes in salesforce._trigger_log: 1" in why
        finally:
            conn.execute("DELETE FROM salesforce._trigger_log WHERE sfid = %s AND state = 'NEW'", (rid,))


def test_the_sensor_defers_by_default_when_airflow_says_operators_do():
    """``[operators] default_deferrable`` (https://airflow.apache.org/docs/apache-airflow/stable/configurations-ref.html
    #default-deferrable) decides, as for Airflow's own deferrable operators; a policy DAG's sensor follows it."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = ("from retention.policy import load_policy; from retention.factory import build_dag; "
             "dag = build_dag(load_policy('include/policies/inactive_contacts.yaml')); "
             "print(dag.get_task('wait_for_connect_sync').deferrable)")

    def deferrable(setting: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"}
        if setting is not None:
            env["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] = setting
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    assert deferrable(None) == "False"
    assert deferrable("True") == "True"
