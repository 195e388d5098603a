"""Heroku Connect API v3: find the connection, and ask whether the mirror of an object is synced.

Retention reads eligible records from the Connect mirror; acting on a stale mirror could miss records
or retain an outdated copy, so every run asks Connect first (and proves the mirror current against the
org itself: ``retention.hooks.mirror_freshness``).

Reaching a connection takes discovery (https://devcenter.heroku.com/articles/heroku-connect-api): the
token's Heroku user is added once to the add-on's access list (``POST https://hc-central.heroku.com/auth/<app>``,
:meth:`HerokuConnectHook.register`, ``python -m retention connect-register``); then
``GET https://hc-central.heroku.com/connections?app=<app>`` lists the app's connections, each with its
``region_url``, and the connection's API root is ``region_url + "/api/v3"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.providers.common.compat.sdk import BaseHook

if TYPE_CHECKING:
    import requests

# Heroku Connect's discovery service. The Heroku CLI plugin lets CONNECT_DISCOVERY_SERVER replace it; here
# the connection's extra ``discovery_url`` does (the local sandbox, tests).
DISCOVERY_URL = "https://hc-central.heroku.com"
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
REGISTER_COMMAND = "python -m retention connect-register"


class HerokuConnectError(Exception):
    """Connect cannot be used as configured, or reports a state that needs a person to fix it."""


@dataclass(frozen=True)
class ConnectTarget:
    """Where one Connect connection's API is: its region's API root and the connection's id."""

    api_root: str
    connection_id: str


@dataclass(frozen=True)
class SyncStatus:
    """One object's mirror as Connect reports it, as of the mapping's last poll."""

    object_name: str
    connection_state: str
    mapping_state: str
    pending: int | None
    sf_count: int | None
    db_count: int | None
    fields: tuple[str, ...] = ()
    last_poll: str | None = None

    @property
    def error(self) -> str | None:
        if self.connection_state in CONNECTION_ERROR_STATES:
            return f"Heroku Connect connection is in state {self.connection_state}"
        if self.mapping_state in MAPPING_ERROR_STATES:
            return f"Heroku Connect mapping {self.object_name} is in state {self.mapping_state}"
        return None

    @property
    def synced(self) -> bool:
        """What Connect claims: DATA_SYNCED means "All rows have been synced since the last poll"
        (https://devcenter.heroku.com/articles/mapping-states-reference), nothing about the org since."""
        return (
            self.connection_state in CONNECTION_OK_STATES
            and self.mapping_state == "DATA_SYNCED"
            and not self.pending
        )

    def missing_fields(self, required: list[str] | tuple[str, ...]) -> list[str]:
        """Those of ``required`` the mapping does not sync (compared case-insensitively)."""
        mapped = {f.lower() for f in self.fields}
        return [f for f in required if f.lower() not in mapped]

    def describe(self) -> str:
        return (f"connection {self.connection_state}, mapping {self.object_name} {self.mapping_state} "
                f"(last poll {self.last_poll or 'unknown'}, pending "
                f"{self.pending if self.pending is not None else 'unknown'})")


class HerokuConnectHook(BaseHook):
    """Talks to the Heroku Connect API v3 of one connection, found by discovery.

    The Airflow connection holds password = a Heroku API token (``heroku authorizations:create``) and
    extra ``app_name`` = the Heroku app with the Connect add-on; optional extras: ``resource_name`` (the
    add-on, when the app has several connections) and ``discovery_url`` (default
    https://hc-central.heroku.com). The older form, host = API root (region URL + ``/api/v3``) and extra
    ``connection_id``, skips discovery. Discovery runs once per hook instance.

    :param heroku_connect_conn_id: the Airflow connection described above.
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
                "host": "empty: found by discovery from the app name (or a region API root, with connection_id)",
                "password": "heroku authorizations:create",
                "extra": '{"app_name": "<Heroku app with the Connect add-on>", '
                         '"resource_name": "<only when the app has several connections>"}',
            },
        }

    # -- configuration ---------------------------------------------------------------------

    @cached_property
    def _extra(self) -> dict[str, Any]:
        conn = self.get_connection(self.heroku_connect_conn_id)
        if not conn.password:
            raise HerokuConnectError(f"Airflow connection {self.heroku_connect_conn_id!r} needs password = a Heroku "
                                     "API token of a user on the Connect add-on's access list")
        extra = conn.extra_dejson
        return {
            "token": conn.password,
            "host": (conn.host or "").rstrip("/") or None,
            "connection_id": extra.get("connection_id") or None,
            "app_name": extra.get("app_name") or None,
            "resource_name": extra.get("resource_name") or None,
            "discovery_url": (extra.get("discovery_url") or DISCOVERY_URL).rstrip("/"),
        }

    @property
    def app_name(self) -> str:
        app = self._extra["app_name"]
        if not app:
            raise HerokuConnectError(
                f"Airflow connection {self.heroku_connect_conn_id!r} needs extra app_name (the Heroku app with the "
                "Connect add-on), or host (the Connect API root) with extra connection_id")
        return app

    def get_conn(self) -> requests.Session:
        import requests

        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {self._extra['token']}", "Heroku-Client": "retention",
                                "Accept": "application/json"})
        return session

    @cached_property
    def session(self) -> requests.Session:
        return self.get_conn()

    # -- discovery ---------------------------------------------------------------------------

    def register(self) -> dict:
        """Add the token's user to the access list of the app's Connect add-on (needed once per user).

        ``POST <discovery>/auth/<app>``; returns Connect's answer (``{user, connections, ...}``).
        """
        url = f"{self._extra['discovery_url']}/auth/{quote(self.app_name, safe='')}"
        response = self.session.post(url, timeout=self.timeout)
        self._raise_for(response, f"adding the token's user to the access list of {self.app_name}")
        return response.json()

    def discover(self) -> list[dict]:
        """The app's Connect connections visible to the token's user (``GET <discovery>/connections``)."""
        params = {"app": self.app_name}
        if self._extra["resource_name"]:
            params["resource_name"] = self._extra["resource_name"]
        url, found = f"{self._extra['discovery_url']}/connections", []
        while url:
            response = self.session.get(url, params=params, timeout=self.timeout)
            self._raise_for(response, f"finding the Heroku Connect connections of {self.app_name}")
            body = response.json()
            found += body.get("results") or []
            url, params = body.get("next"), None
        return found

    @cached_property
    def target(self) -> ConnectTarget:
        """The connection's API root and id: from the Airflow connection (host + connection_id), else by
        discovery."""
        extra = self._extra
        if extra["host"] and extra["connection_id"]:
            return ConnectTarget(extra["host"], extra["connection_id"])
        found = self.discover()
        if not found:
            raise HerokuConnectError(
                f"Heroku Connect shows no connection of app {self.app_name!r}"
                + (f" named {extra['resource_name']!r}" if extra["resource_name"] else "")
                + " to the user of the token in Airflow connection "
                f"{self.heroku_connect_conn_id!r}. By default no user is on a Connect add-on's access list: add "
                f"this user once with `{REGISTER_COMMAND} --conn-id {self.heroku_connect_conn_id}` (POST "
                f"{extra['discovery_url']}/auth/{self.app_name}), and check app_name and resource_name.")
        if len(found) > 1:
            names = ", ".join(sorted(str(c.get("resource_name")) for c in found))
            raise HerokuConnectError(
                f"App {self.app_name!r} has {len(found)} Heroku Connect connections ({names}); set extra "
                f"resource_name in Airflow connection {self.heroku_connect_conn_id!r} to the one to use.")
        (connection,) = found
        return ConnectTarget(connection["region_url"].rstrip("/") + "/api/v3", connection["id"])

    # -- the connection's API ----------------------------------------------------------------

    def _raise_for(self, response: requests.Response, doing: str) -> None:
        if response.status_code == 401:
            raise HerokuConnectError(f"Heroku refused the API token of Airflow connection "
                                     f"{self.heroku_connect_conn_id!r} (401) while {doing}")
        if response.status_code == 403:
            raise HerokuConnectError(
                f"Heroku Connect refused access (403) while {doing}: the token's user is not on the add-on's "
                f"access list; add it once with `{REGISTER_COMMAND} --conn-id {self.heroku_connect_conn_id}`")
        if response.status_code == 404 and "/auth/" in response.url:
            raise HerokuConnectError(f"Heroku has no app {self.app_name!r} with a Connect add-on visible to the "
                                     f"token's user (404) while {doing}")
        response.raise_for_status()

    def _get(self, path: str, **params) -> dict:
        response = self.session.get(f"{self.target.api_root}{path}", params=params or None, timeout=self.timeout)
        self._raise_for(response, f"reading {path}")
        return response.json()

    def _post(self, path: str) -> None:
        response = self.session.post(f"{self.target.api_root}{path}", timeout=self.timeout)
        self._raise_for(response, f"calling {path}")

    def connection_detail(self) -> dict:
        """The connection with its mappings and their states."""
        return self._get(f"/connections/{self.target.connection_id}", deep="true")

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
            fields=tuple((mapping.get("config") or {}).get("fields") or ()),
            last_poll=(mapping.get("times") or {}).get("sf_poll"),
        )

    def write_errors(self, object_name: str | None = None) -> list[dict]:
        """Failed write-backs of the last 24 hours."""
        if object_name:
            mapping = self.mapping(object_name)
            return self._get(f"/mappings/{mapping['id']}/errors")["results"]
        return self._get(f"/connections/{self.target.connection_id}/errors")["results"]

    def reload(self, object_name: str) -> None:
        mapping = self.mapping(object_name)
        self._post(f"/mappings/{mapping['id']}/actions/reload")

    def test_connection(self) -> tuple[bool, str]:
        try:
            detail = self.connection_detail()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"Connection {detail.get('name', detail.get('id'))} is {detail['state']}"
