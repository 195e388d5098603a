"""Wait until Heroku Connect has mirrored every change of an object into the store.

Retention selects eligible records from the mirror, so a run must never start on a stale one: the
sensor passes only when the connection is healthy, the object's mapping is ``DATA_SYNCED`` with
nothing pending, and no write to that table is waiting in Connect's ``_trigger_log``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout

from retention.hooks.heroku_connect import HerokuConnectHook

if TYPE_CHECKING:
    from airflow.sdk import Context

# Trigger-log states that mean a write to the mirrored table has not reached Salesforce (or failed):
# the mirror and the org disagree until Connect has processed them.
UNSETTLED_WRITE_STATES = ("NEW", "PENDING", "FAILED", "REQUEUE")


def unsettled_writes(store_conn_id: str, schema: str, table: str) -> int:
    """Rows of ``<schema>._trigger_log`` for ``table`` that Connect has not settled."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from psycopg import sql

    query = sql.SQL("SELECT count(*) FROM {} WHERE table_name = %s AND state = ANY(%s)").format(
        sql.Identifier(schema, "_trigger_log")
    )
    with PostgresHook(postgres_conn_id=store_conn_id).get_conn() as conn, conn.cursor() as cur:
        cur.execute(query.as_string(conn), (table, list(UNSETTLED_WRITE_STATES)))
        return cur.fetchone()[0]


def check_sync(heroku_connect_conn_id: str, store_conn_id: str, schema: str, object_name: str) -> tuple[bool, str]:
    """(synced, explanation); raises AirflowFailException for states that waiting cannot fix."""
    status = HerokuConnectHook(heroku_connect_conn_id).sync_status(object_name)
    if status.error:
        raise AirflowFailException(f"{status.error}; not reading a mirror Connect cannot keep current. "
                                   f"({status.describe()})")
    writes = unsettled_writes(store_conn_id, schema, object_name.lower())
    explanation = f"{status.describe()}, unsettled writes in {schema}._trigger_log: {writes}"
    return status.synced and writes == 0, explanation


class ConnectSyncSensor(BaseSensorOperator):
    """Passes once the Connect mirror of ``object_name`` (and of ``also_wait_for``) is current.

    :param object_name: the Salesforce object whose mapping must be synced.
    :param also_wait_for: further objects whose mirror the run reads (e.g. PrivacyHold for hold checks).
    :param heroku_connect_conn_id: Airflow connection of the Heroku Connect API.
    :param store_conn_id: Airflow connection of the store (where the mirror schema lives).
    :param mirror_schema: Connect's schema in the store.
    :param deferrable: wait in the triggerer instead of holding or rescheduling a worker slot.
    """

    template_fields = ("object_name", "also_wait_for")
    ui_color = "#79589f"

    def __init__(
        self,
        *,
        object_name: str,
        also_wait_for: tuple[str, ...] = (),
        heroku_connect_conn_id: str = HerokuConnectHook.default_conn_name,
        store_conn_id: str = "retention_store",
        mirror_schema: str = "salesforce",
        deferrable: bool = False,
        poke_interval: float = 30,
        timeout: float = 60 * 60,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.object_name = object_name
        self.also_wait_for = tuple(also_wait_for)
        self.heroku_connect_conn_id = heroku_connect_conn_id
        self.store_conn_id = store_conn_id
        self.mirror_schema = mirror_schema
        self.deferrable = deferrable
        self._last = "no check made yet"

    def poke(self, context: Context) -> bool:
        for name in (self.object_name, *self.also_wait_for):
            synced, self._last = check_sync(self.heroku_connect_conn_id, self.store_conn_id, self.mirror_schema, name)
            self.log.info("Heroku Connect %s: %s", "synced" if synced else "behind", self._last)
            if not synced:
                return False
        return True

    def execute(self, context: Context) -> Any:
        if self.deferrable:
            from retention.triggers.connect_sync import ConnectSyncTrigger

            self.defer(
                trigger=ConnectSyncTrigger(
                    object_names=[self.object_name, *self.also_wait_for],
                    heroku_connect_conn_id=self.heroku_connect_conn_id,
                    store_conn_id=self.store_conn_id,
                    mirror_schema=self.mirror_schema,
                    poke_interval=self.poke_interval,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            raise AirflowSensorTimeout(self._timeout_message()) from None

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "synced":
            raise AirflowFailException((event or {}).get("message", "Heroku Connect check failed"))
        self.log.info("Heroku Connect synced: %s", event.get("message"))

    def _timeout_message(self) -> str:
        return (f"Heroku Connect did not finish mirroring {self.object_name} within {self.timeout:.0f}s "
                f"(last check: {self._last}). Not proceeding on a stale mirror; check the connection's state "
                "in the Heroku dashboard.")
