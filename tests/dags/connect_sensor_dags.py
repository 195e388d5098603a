"""DAGs around ConnectSyncSensor for tests/retention/sensors/test_connect_sync.py (Airflow's dags folder is this
directory during the tests)."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG

from retention.sensors.connect_sync import ConnectSyncSensor

START = dt.datetime(2025, 1, 1)
# What inactive_contacts reads from the Contact mirror; all of it is mapped in the sandbox.
CONTACT_FIELDS = ["LastModifiedDate", "LeadSource", "LastName", "Email", "Birthdate", "MailingCountry"]


def _dag(dag_id: str, **sensor_kwargs) -> DAG:
    sensor_kwargs.setdefault("required_fields", {"Contact": CONTACT_FIELDS})
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        ConnectSyncSensor(task_id="wait_for_connect_sync", object_name="Contact", poke_interval=0.2, **sensor_kwargs)
    return dag


poke = _dag("connect_sensor_poke", mode="poke", timeout=60)
reschedule = _dag("connect_sensor_reschedule", mode="reschedule", timeout=60)
deferred = _dag("connect_sensor_deferrable", deferrable=True, timeout=60)
short = _dag("connect_sensor_short_timeout", mode="poke", timeout=2)
unmapped = _dag("connect_sensor_unmapped_fields", mode="poke", timeout=60,
                required_fields={"Contact": [*CONTACT_FIELDS, "Title", "description"]})
