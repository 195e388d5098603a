"""The deferrable side of ``ConnectSyncSensor``: the triggerer runs the same mirror check, no worker waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ConnectSyncTrigger(BaseTrigger):
    """Fires ``{"status": "synced"}`` once every object's mirror passes ``check_mirrors``, or
    ``{"status": "error"}`` when the check says waiting cannot help. The timeout is the deferral's own."""

    def __init__(self, *, object_names: list[str], heroku_connect_conn_id: str, store_conn_id: str,
                 mirror_schema: str, poke_interval: float, salesforce_conn_id: str = "salesforce_default",
                 required_fields: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.object_names = list(object_names)
        self.required_fields = {k: list(v) for k, v in (required_fields or {}).items()}
        self.heroku_connect_conn_id = heroku_connect_conn_id
        self.store_conn_id = store_conn_id
        self.salesforce_conn_id = salesforce_conn_id
        self.mirror_schema = mirror_schema
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "retention.triggers.connect_sync.ConnectSyncTrigger",
            {
                "object_names": self.object_names,
                "required_fields": self.required_fields,
                "heroku_connect_conn_id": self.heroku_connect_conn_id,
                "store_conn_id": self.store_conn_id,
                "salesforce_conn_id": self.salesforce_conn_id,
                "mirror_schema": self.mirror_schema,
                "poke_interval": self.poke_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from retention.hooks.heroku_connect import HerokuConnectError
        from retention.hooks.mirror_freshness import check_mirrors

        while True:
            try:
                ready, explanation = await asyncio.to_thread(
                    check_mirrors, self.object_names, required_fields=self.required_fields,
                    heroku_connect_conn_id=self.heroku_connect_conn_id, store_conn_id=self.store_conn_id,
                    salesforce_conn_id=self.salesforce_conn_id, schema=self.mirror_schema, log=self.log)
            except HerokuConnectError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            if ready:
                yield TriggerEvent({"status": "synced", "message": explanation})
                return
            await asyncio.sleep(self.poke_interval)
