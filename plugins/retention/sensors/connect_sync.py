"""Wait until the Heroku Connect mirror of an object can be read: mapped, synced and proven current.

Retention selects eligible records from the mirror, so a run must never start on a stale one. The
sensor passes only when ``retention.hooks.mirror_freshness.check_mirrors`` says so for every object the run
reads: the connection healthy, the mapping ``DATA_SYNCED`` with nothing pending, no write to the table
waiting in Connect's ``_trigger_log``, and the mirror as new as the org (its newest ``SystemModstamp``,
and the org's recent deletions gone). A mapping that does not sync a field the run reads fails the task
at once, naming the fields.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from retention.hooks.heroku_connect import HerokuConnectError, HerokuConnectHook
from retention.hooks.mirror_freshness import check_mirrors
from retention.hooks.store import MIRROR_SCHEMA

if TYPE_CHECKING:
    from airflow.sdk import Context


class ConnectSyncSensor(BaseSensorOperator):
    """Passes once the Connect mirror of ``object_name`` (and of ``also_wait_for``) is current.

    :param object_name: the Salesforce object whose mirror the run reads.
    :param also_wait_for: further objects whose mirror the run reads (e.g. PrivacyHold for hold checks).
    :param required_fields: object -> the Salesforce fields the run reads from its mirror; a mapping
        that does not sync one of them fails the task at once.
    :param heroku_connect_conn_id: Airflow connection of the Heroku Connect API.
    :param store_conn_id: Airflow connection of the store (where the mirror schema lives).
    :param salesforce_conn_id: Airflow connection of the org, asked for its newest SystemModstamp and its
        recent deletions.
    :param mirror_schema: Connect's schema in the store.
    :param deferrable: wait in the triggerer instead of holding or rescheduling a worker slot (default: Airflow's
        ``[operators] default_deferrable``).
    """

    template_fields = ("object_name", "also_wait_for")
    ui_color = "#79589f"

    def __init__(
        self,
        *,
        object_name: str,
        also_wait_for: tuple[str, ...] = (),
        required_fields: dict[str, list[str]] | None = None,
        heroku_connect_conn_id: str = HerokuConnectHook.default_conn_name,
        store_conn_id: str = "retention_store",
        salesforce_conn_id: str = "salesforce_default",
        mirror_schema: str = MIRROR_SCHEMA,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float = 30,
        timeout: float = 60 * 60,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, mode=mode, **kwargs)
        self.object_name = object_name
        self.also_wait_for = tuple(also_wait_for)
        self.required_fields = {name: list(fields) for name, fields in (required_fields or {}).items()}
        self.heroku_connect_conn_id = heroku_connect_conn_id
        self.store_conn_id = store_conn_id
        self.salesforce_conn_id = salesforce_conn_id
        self.mirror_schema = mirror_schema
        self.deferrable = deferrable
        self._last = "no check made yet"

    @property
    def object_names(self) -> list[str]:
        return [self.object_name, *self.also_wait_for]

    def poke(self, context: Context) -> bool:
        try:
            ready, self._last = check_mirrors(
                self.object_names, required_fields=self.required_fields,
                heroku_connect_conn_id=self.heroku_connect_conn_id, store_conn_id=self.store_conn_id,
                salesforce_conn_id=self.salesforce_conn_id, schema=self.mirror_schema, log=self.log)
        except HerokuConnectError as exc:
            raise AirflowFailException(str(exc)) from None
        return ready

    def execute(self, context: Context) -> Any:
        if self.deferrable:
            from retention.triggers.connect_sync import ConnectSyncTrigger

            self.defer(
                trigger=ConnectSyncTrigger(
                    object_names=self.object_names,
                    required_fields=self.required_fields,
                    heroku_connect_conn_id=self.heroku_connect_conn_id,
                    store_conn_id=self.store_conn_id,
                    salesforce_conn_id=self.salesforce_conn_id,
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
        self.log.info("Heroku Connect mirror ready: %s", event.get("message"))

    def _timeout_message(self) -> str:
        return (f"Heroku Connect did not finish mirroring {self.object_name} within {self.timeout:.0f}s "
                f"(last check: {self._last}). Not proceeding on a stale mirror; check the connection's state "
                "in the Heroku dashboard.")
