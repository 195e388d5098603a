"""Heroku Connect API v3: is the mirror of an object in the store complete and current?

Retention reads eligible records from the Connect mirror; acting on a stale mirror could miss records
or retain an outdated copy, so every run asks Connect first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseHook

if TYPE_CHECKING:
    import requests

# Connection states in which Connect is working normally (django-heroku-connect treats the same set
# as healthy); anything else means the mirror cannot be trusted right now.
CONNECTION_OK_STATES = frozenset({"IDLE", "POLLING_DB_CHANGES", "IMPORT_CONFIGURATION", "BUSY"})
# Connection and mapping states that waiting will not fix: they need a person (re-authorise,
# recover, fix the mapping), so a sensor fails at once instead of waiting out its timeout.
CONNECTION_ERROR_STATES = frozenset(
    {"SYSTEM_ERROR", "DB_UNAVAILABLE", "TOO_MANY_ROWS", "UNAUTHORIZED", "HEROKU_UNAUTH", "NEED_AUTHENTICATION",
     "INACTIVE_ORG"}
)
MAPPING_ERROR_STATES = frozenset(
    {"BULK_LOAD_ERROR", "SYSTEM_ERROR", "DB_UNAVAILABLE", "BAD_CONFIG", "SYNC_REMOVED", "INACTIVE_ORG",
     "UNAUTHORIZED"}
)


class HerokuConnectError(Exception):
    """Connect reports a state that needs a person to fix it."""


@dataclass(frozen=True)
class SyncStatus:
    """One object's mirror as Connect reports it."""

    object_name: str
    connection_state: str
    mapping_state: str
    pending: int | None
    sf_count: int | None
    db_count: int | None

    @property
    def error(self) -> str | None:
        if self.connection_state in CONNECTION_ERROR_STATES:
            return f"Heroku Connect connection is in state {self.connection_state}"
        if self.mapping_state in MAPPING_ERROR_STATES:
            return f"Heroku Connect mapping {self.object_name} is in state {self.mapping_state}"
        return None

    @property
    def synced(self) -> bool:
        return (
            self.connection_state in CONNECTION_OK_STATES
            and self.mapping_state == "DATA_SYNCED"
            and not self.pending
        )

    def describe(self) -> str:
        return (f"connection {self.connection_state}, mapping {self.object_name} {self.mapping_state}, "
                f"pending {self.pending if self.pending is not None else 'unknown'}")


class HerokuConnectHook(BaseHook):
    """Talks to the Heroku Connect API v3 of one connection.

    :param heroku_connect_conn_id: Airflow connection: host = API root (region URL + ``/api/v3``),
        password = Heroku API token, extra ``connection_id`` = the Connect connection's id.
    :param timeout: seconds to wait for each API response.
    """

    conn_name_attr = "heroku_connect_conn_id"
    default_conn_name = "heroku_connect_default"
    conn_type = "heroku_connect"
    hook_name = "Heroku Connect"

    def __init__(self, heroku_connect_conn_id: str = default_conn_name, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.heroku_connect_conn_id = heroku_connect_conn_id
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "login"],
            "relabeling": {"host": "API URL", "password": "Heroku API token"},
            "placeholders": {
                "host": "https://connect-virginia.heroku.com/api/v3",
                "extra": '{"connection_id": "<Connect connection id>"}',
            },
        }

    @cached_property
    def _config(self) -> tuple[str, str, str]:
        conn = self.get_connection(self.heroku_connect_conn_id)
        connection_id = conn.extra_dejson.get("connection_id")
        if not conn.host or not conn.password or not connection_id:
            raise ValueError(
                f"Airflow connection {self.heroku_connect_conn_id!r} needs host (the Connect API URL), "
                "password (a Heroku API token) and extra connection_id"
            )
        return conn.host.rstrip("/"), conn.password, connection_id

    def get_conn(self) -> requests.Session:
        import requests

        _, token, _ = self._config
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {token}", "Heroku-Client": "retention"})
        return session

    @cached_property
    def session(self) -> requests.Session:
        return self.get_conn()

    def _get(self, path: str, **params) -> dict:
        base, _, _ = self._config
        response = self.session.get(f"{base}{path}", params=params or None, timeout=self.timeout)
        if response.status_code == 401:
            raise HerokuConnectError("Heroku Connect refused the API token (401)")
        response.raise_for_status()
        return response.json()

    def _post(self, path: str) -> None:
        base, _, _ = self._config
        response = self.session.post(f"{base}{path}", timeout=self.timeout)
        response.raise_for_status()

    def connection_detail(self) -> dict:
        """The connection with its mappings and their states."""
        _, _, cid = self._config
        return self._get(f"/connections/{cid}", deep="true")

    def mapping(self, object_name: str, detail: dict | None = None) -> dict:
        detail = detail or self.connection_detail()
        for mapping in detail.get("mappings", []):
            if mapping["object_name"].lower() == object_name.lower():
                return mapping
        raise HerokuConnectError(f"Heroku Connect has no mapping for {object_name}; add one so it is mirrored")

    def sync_status(self, object_name: str) -> SyncStatus:
        detail = self.connection_detail()
        mapping = self.mapping(object_name, detail)
        counts = mapping.get("counts") or {}
        return SyncStatus(
            object_name=mapping["object_name"],
            connection_state=detail["state"],
            mapping_state=mapping["state"],
            pending=counts.get("pending"),
            sf_count=counts.get("sf"),
            db_count=counts.get("db"),
        )

    def write_errors(self, object_name: str | None = None) -> list[dict]:
        """Failed write-backs of the last 24 hours."""
        if object_name:
            mapping = self.mapping(object_name)
            return self._get(f"/mappings/{mapping['id']}/errors")["results"]
        _, _, cid = self._config
        return self._get(f"/connections/{cid}/errors")["results"]

    def reload(self, object_name: str) -> None:
        mapping = self.mapping(object_name)
        self._post(f"/mappings/{mapping['id']}/actions/reload")

    def test_connection(self) -> tuple[bool, str]:
        try:
            detail = self.connection_detail()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"Connection {detail.get('name', detail.get('id'))} is {detail['state']}"
