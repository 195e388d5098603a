"""The deferrable side of ``ConnectSyncSensor``: the triggerer polls Connect, no worker waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ConnectSyncTrigger(BaseTrigger):
    """Fires ``{"status": "synced"}`` once the mirror is current, or ``{"status": "error"}`` when Connect
    reports a state that waiting cannot fix. The timeout is the deferral's own."""

    def __init__(self, *, object_names: list[str], heroku_connect_conn_id: str, store_conn_id: str,
                 mirror_schema: str, poke_interval: float) -> None:
        super().__init__()
        self.object_names = list(object_names)
        self.heroku_connect_conn_id = heroku_connect_conn_id
        self.store_conn_id = store_conn_id
        self.mirror_schema = mirror_schema
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "retention.triggers.connect_sync.ConnectSyncTrigger",
            {
                "object_names": self.object_names,
                "heroku_connect_conn_id": self.heroku_connect_conn_id,
                "store_conn_id": self.store_conn_id,
                "mirror_schema": self.mirror_schema,
                "poke_interval": self.poke_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.common.compat.sdk import AirflowFailException

        from retention.sensors.connect_sync import check_sync

        while True:
            try:
                for name in self.object_names:
                    synced, explanation = await asyncio.to_thread(
                        check_sync, self.heroku_connect_conn_id, self.store_conn_id, self.mirror_schema, name
                    )
                    if not synced:
                        break
            except AirflowFailException as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            self.log.info("Heroku Connect %s: %s", "synced" if synced else "behind", explanation)
            if synced:
                yield TriggerEvent({"status": "synced", "message": explanation})
                return
            await asyncio.sleep(self.poke_interval)
