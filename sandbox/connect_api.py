"""Heroku Connect's APIs over the sandbox mirror: the discovery service and one connection's API v3.

Discovery is what ``https://hc-central.heroku.com`` serves (https://devcenter.heroku.com/articles/heroku-connect-api):
``POST /auth/<app>`` adds the token's Heroku user to the add-on's access list ("By default, no users are
present on a Heroku Connect add-on"), and ``GET /connections?app=<app>[&resource_name=]`` finds the user's
connections, each with its ``region_url``; the API root is ``region_url + "/api/v3"``. Here the same server
plays both parts: its base URL is the region URL. Response shapes follow heroku/heroku-connect-plugin
(``SearchConnectionsResponse``, ``RequestAppAccessResponse``, ``Connection``, ``Mapping``).

The region API serves the subset the product calls (see the reference notes, section 2): a connection
with its mappings, mapping states and counts as of each mapping's last poll, mapping edits, pause/resume/
reload actions answering 202, and the write errors of the last 24 h. A user not on the access list sees
no connection and gets 403 from the connection's endpoints. Handlers are plain functions: Starlette runs
them in its thread pool, which suits the blocking psycopg calls behind them.
"""

from __future__ import annotations

import datetime as dt
import hmac
import inspect
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.config import API_VERSION
from sandbox.connect import MappingError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request

    from sandbox.connect import ConnectSync

API = "/api/v3"
# The sandbox's region and cell, named as Connect's discovery names its own (``regions``/``cells``).
REGION, CELL = "local", "sandbox"
REGION_INFO = {"flag": "sandbox", "label": "Sandbox (localhost)"}
# Mapping settings the sandbox cannot change (every mapping is read-only, polled, with Connect's API budget);
# a PUT may repeat them but not change them.
FIXED_CONFIG = {"access": "read_only", "sf_notify_enabled": False, "sf_max_daily_api_calls": 30000}
# Mapping settings the server manages; a PUT that sends back a whole config may include them.
MANAGED_CONFIG = ("revision", "applied_at", "indexes")


def mapping_id(connection_id: str, object_name: str) -> str:
    """A mapping's id: stable per connection and object, so clients may cache it across restarts."""
    try:
        namespace = uuid.UUID(connection_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, connection_id)
    return str(uuid.uuid5(namespace, object_name))


def user_id(email: str) -> str:
    """A Heroku user's id (a UUID, as Heroku issues them), stable per user."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"heroku-user:{email}"))


def _iso(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value


def _seconds(value: float):
    return int(value) if float(value).is_integer() else value


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"id": code, "message": message}, status_code=status)


def create_app(
    sync: ConnectSync,
    *,
    tokens: Mapping[str, str],
    connection_id: str,
    app_name: str = "retention-sandbox",
    resource_name: str = "herokuconnect-sandbox",
    org_id: str,
) -> Starlette:
    """The discovery service and the Connect API of one connection whose mappings are ``sync``'s objects.

    :param sync: the sync loop that owns the mirror (and the add-on's access list).
    :param tokens: bearer token -> the email of the Heroku user it belongs to.
    :param connection_id: the connection's id (a UUID, as Heroku issues them).
    :param app_name: the Heroku app the add-on belongs to.
    :param resource_name: the add-on's resource name (``?resource_name=`` filter).
    :param org_id: the Salesforce org id reported as ``organization_id``.
    """
    by_mapping_id = {mapping_id(connection_id, obj.name): obj for obj in sync.objects}
    store = urlsplit(sync.store_url)
    created_at = dt.datetime.now(dt.UTC)
    app_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{app_name}.herokuapp.com"))
    users = {token: {"id": user_id(email), "email": email} for token, email in tokens.items()}

    def user_of(request: Request) -> dict | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        for token, user in users.items():
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                return user
        return None

    def denied(request: Request, scoped: bool) -> JSONResponse | None:
        user = user_of(request)
        if user is None:
            return _error(401, "unauthorized", "Invalid credentials provided.")
        request.state.user = user
        if scoped and not sync.has_access(app_id, user["id"]):
            # The docs do not say how the API answers a user missing from the access list; refusing is
            # the stricter choice (nothing may work before the one-time POST /auth).
            return _error(403, "forbidden", f"You are not on the access list of the Heroku Connect add-on of app "
                                            f"{app_name}: POST /auth/{app_name} on the discovery service "
                                            "(https://hc-central.heroku.com) adds you.")
        return None

    def guarded(handler, *, scoped: bool = True):
        """Check the bearer token (and, for a connection's endpoints, the access list) before the handler."""
        if inspect.iscoroutinefunction(handler):
            async def endpoint(request: Request):
                refused = await run_in_threadpool(denied, request, scoped)
                return refused or await handler(request)
        else:
            def endpoint(request: Request):
                return denied(request, scoped) or handler(request)

        endpoint.__name__ = handler.__name__
        return endpoint

    def root(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def base(request: Request) -> str:
        return root(request) + API

    # -- discovery (hc-central) --------------------------------------------------------------

    def discovered(request: Request) -> dict:
        """The connection as discovery lists it (heroku-connect-plugin's ``Connection``)."""
        return {
            "addon_type": "Sync",
            "app_id": app_id,
            "app_name": app_name,
            "cell": CELL,
            "cell_label": REGION_INFO["label"],
            "detail_url": f"{base(request)}/connections/{connection_id}",
            "display_name": app_name,
            "id": connection_id,
            "region": REGION,
            "region_flag": REGION_INFO["flag"],
            "region_label": REGION_INFO["label"],
            "region_url": root(request),
            "resource_name": resource_name,
        }

    def visible(request: Request) -> list[dict]:
        """The connections the user may see, filtered by ``app``, ``resource_name`` and ``addon_type``."""
        q = request.query_params
        if not sync.has_access(app_id, request.state.user["id"]):
            return []
        if q.get("app") not in (None, app_name, app_id) or q.get("resource_name") not in (None, resource_name):
            return []
        if q.get("addon_type") not in (None, "1"):  # 1 = Sync, 2 = Connect Events
            return []
        return [discovered(request)]

    def regions_and_cells(request: Request, found: list[dict]) -> dict:
        return {"regions": {REGION: REGION_INFO} if found else {},
                "cells": {CELL: {"url": root(request), **REGION_INFO}} if found else {}}

    def search_connections(request: Request):
        found = visible(request)
        return JSONResponse({"count": len(found), "results": found, "next": None, "previous": None,
                             **regions_and_cells(request, found)})

    def request_access(request: Request):
        if request.path_params["app"] not in (app_name, app_id):
            raise HTTPException(404, f"App {request.path_params['app']} not found or it has no Heroku Connect add-on")
        sync.grant_access(app_id, request.state.user["id"])
        found = visible(request)
        # The answer's status is not documented (the plugin reads only the body); 200 with the body.
        return JSONResponse({"user": request.state.user, "connections": found, **regions_and_cells(request, found)})

    # -- the connection's API v3 -------------------------------------------------------------

    def mapping_json(request: Request, obj, state: dict, paused: bool) -> dict:
        mid = mapping_id(connection_id, obj.name)
        polling = _seconds(state["polling_seconds"]) if state.get("polling_seconds") else None
        polled = state.get("polled_at")
        return {
            "id": mid,
            "_id": uuid.UUID(mid).int % 100_000_000,
            "object_name": obj.name,
            "state": state["state"],
            "state_description": state["state_description"],
            "config": {
                **FIXED_CONFIG,
                "sf_polling_seconds": polling,
                "fields": {name: {} for name in sorted(state.get("fields") or ())},
                "indexes": {"Id": {"unique": True}, "SystemModstamp": {"unique": False}},
                "revision": state.get("revision"),
                "applied_at": _iso(state.get("applied_at")),
            },
            "connection": {"id": connection_id},
            "access": FIXED_CONFIG["access"],
            "sf_notify_enabled": FIXED_CONFIG["sf_notify_enabled"],
            "sf_polling_seconds": polling,
            "counts": state["counts"],
            # Point-in-time: the last poll's counts, and when they were taken.
            "db_count_date": _iso(state["db_count_date"]),
            "salesforce_count_date": _iso(state["salesforce_count_date"]),
            # When the last poll read Salesforce, in the plugin fixture's format ('2025-07-16 20:12:43.734321+00:00').
            "times": {"sf_poll": str(polled.astimezone(dt.UTC)) if polled else None, "sf_write": None,
                      "db_poll": None, "db_write": None},
            "sync_flags": {},
            "upsert_field": None,
            "actively_writing": False,
            "is_polling": not paused,
            "has_hc_columns": True,
            "detail_url": f"{base(request)}/mappings/{mid}",
            "errors_url": f"{base(request)}/mappings/{mid}/errors",
            "schema_url": f"{base(request)}/connections/{connection_id}/schemas/{obj.name}",
            "created_at": _iso(state["created_at"]),
            "updated_at": _iso(state.get("applied_at") or state["created_at"]),
        }

    def connection_json(request: Request, *, deep: bool) -> dict:
        state = sync.connection_state()
        out = {
            "id": connection_id,
            "name": f"{app_name}:herokuconnect",
            "resource_name": resource_name,
            "app_name": app_name,
            "app_id": app_id,
            "addon_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"addon:{connection_id}")),
            "schema_name": sync.schema,
            "db_key": "DATABASE_URL",
            "database": {"host": store.hostname, "database": store.path.lstrip("/"), "port": store.port or 5432},
            "organization_id": org_id,
            "state": state,
            "mappings_summary_state": None,
            "detail_url": f"{base(request)}/connections/{connection_id}",
            "region_url": root(request),
            "created_at": _iso(created_at),
            "plan": "enterprise",
            # The Salesforce API version Connect itself uses for the org (`connect:manage-sf-api-version` changes it).
            "sf_info": {"organization_id": org_id, "environment": "sandbox", "api_version": API_VERSION},
            "features": {"poll_db_no_merge": False, "disable_bulk_writes": False},
        }
        if deep:
            paused = state == "PAUSED"
            try:
                states = sync.mapping_states()
            except psycopg.OperationalError:
                # Report the connection (state DB_UNAVAILABLE) rather than fail the whole call.
                now = dt.datetime.now(dt.UTC)
                stub = {"state": "DB_UNAVAILABLE", "state_description": "The database is unavailable",
                        "counts": None, "db_count_date": None, "salesforce_count_date": None,
                        "created_at": now}
                states = {obj.name: stub for obj in sync.objects}
            out["mappings"] = [mapping_json(request, obj, states[obj.name], paused) for obj in sync.objects]
            pending = [m["state"] for m in out["mappings"] if m["state"] != "DATA_SYNCED"]
            out["mappings_summary_state"] = pending[0] if pending else "DATA_SYNCED"
        return out

    def find_mapping(request: Request):
        obj = by_mapping_id.get(request.path_params["mid"])
        if obj is None:
            raise HTTPException(404, f"Mapping {request.path_params['mid']} not found")
        return obj

    def check_connection(request: Request) -> None:
        if request.path_params["cid"] != connection_id:
            raise HTTPException(404, f"Connection {request.path_params['cid']} not found")

    def errors_json(rows: list[dict]) -> dict:
        results = [
            {"id": r["id"], "table_name": r["table_name"], "record_id": r["record_id"], "message": r["sf_message"],
             "created_at": _iso(r["created_at"])}
            for r in rows
        ]
        return {"count": len(results), "results": results}

    def list_connections(request: Request):
        app = request.query_params.get("app")
        if (app and app not in (app_name, app_id)) or not sync.has_access(app_id, request.state.user["id"]):
            return JSONResponse({"count": 0, "results": []})
        deep = request.query_params.get("deep", "").lower() in ("1", "true", "yes")
        return JSONResponse({"count": 1, "results": [connection_json(request, deep=deep)]})

    def get_connection(request: Request):
        check_connection(request)
        # The real API returns mappings with ?deep=true; always returning them is harmless and simpler.
        return JSONResponse(connection_json(request, deep=True))

    def pause_connection(request: Request):
        check_connection(request)
        sync.pause()
        return JSONResponse({}, status_code=202)

    def resume_connection(request: Request):
        check_connection(request)
        sync.resume()
        return JSONResponse({}, status_code=202)

    def connection_errors(request: Request):
        check_connection(request)
        return JSONResponse(errors_json(sync.write_errors()))

    def get_mapping(request: Request):
        obj = find_mapping(request)
        paused = sync.connection_state() == "PAUSED"
        return JSONResponse(mapping_json(request, obj, sync.mapping_state(obj.name), paused))

    def edit_mapping_config(request: Request, body) -> JSONResponse:
        obj = find_mapping(request)
        config = body.get("config") if isinstance(body, dict) else None
        if not isinstance(config, dict):
            raise HTTPException(400, 'expected {"config": {...}}')
        unknown = sorted(set(config) - {"fields", "sf_polling_seconds", *FIXED_CONFIG, *MANAGED_CONFIG})
        if unknown:
            raise HTTPException(400, f"unknown mapping settings: {', '.join(unknown)}")
        for key, value in FIXED_CONFIG.items():
            if key in config and config[key] != value:
                raise HTTPException(400, f"the sandbox's mappings keep {key} = {value!r}")
        fields = config.get("fields")
        if fields is not None and not isinstance(fields, dict):
            raise HTTPException(400, "config.fields must be an object {FieldName: {}}, as the API returns it")
        polling = config.get("sf_polling_seconds")
        if polling is not None and (isinstance(polling, bool) or not isinstance(polling, int | float)):
            raise HTTPException(400, "config.sf_polling_seconds must be a number of seconds")
        try:
            sync.edit_mapping(obj.name, fields=list(fields) if fields is not None else None,
                              polling_seconds=polling)
        except MappingError as exc:
            raise HTTPException(400, str(exc)) from None
        paused = sync.connection_state() == "PAUSED"
        return JSONResponse(mapping_json(request, obj, sync.mapping_state(obj.name), paused))

    async def edit_mapping(request: Request):
        """``PUT /mappings/{id}`` with ``{"config": {...}}``: change the mapping's fields and/or polling
        interval. Neither the Dev Center nor heroku-connect-plugin or terraform-provider-herokux show
        this call's answer; the sandbox answers 200 with the mapping, as GET does, and 400 with a message
        for a setting it cannot apply (also undocumented)."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_request", "the body must be JSON")
        return await run_in_threadpool(edit_mapping_config, request, body)

    def reload_mapping(request: Request):
        obj = find_mapping(request)
        sync.reload(obj.name)
        return JSONResponse({}, status_code=202)

    def mapping_errors(request: Request):
        obj = find_mapping(request)
        return JSONResponse(errors_json(sync.write_errors(obj.name)))

    def force_state(request: Request):
        """Sandbox-only: make the API report a connection or mapping state, so consumers' error paths
        can be tested: ``POST /__sandbox/state?state=SYSTEM_ERROR[&object=Contact]``; no state clears it."""
        try:
            sync.force_state(request.query_params.get("state") or None, request.query_params.get("object"))
        except KeyError as exc:
            raise HTTPException(404, f"no mapping for {exc}") from None
        return JSONResponse({"connection": sync.connection_state()})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "error")
        return _error(exc.status_code, code, exc.detail)

    async def db_error(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        return _error(503, "db_unavailable", "The database of the connection is unavailable.")

    routes = [
        # Discovery (hc-central.heroku.com).
        Route("/auth/{app}", guarded(request_access, scoped=False), methods=["POST"]),
        Route("/connections", guarded(search_connections, scoped=False), methods=["GET"]),
        # The connection's region API.
        Route(f"{API}/connections", guarded(list_connections, scoped=False), methods=["GET"]),
        Route(f"{API}/connections/{{cid}}", guarded(get_connection), methods=["GET"]),
        Route(f"{API}/connections/{{cid}}/actions/pause", guarded(pause_connection), methods=["POST"]),
        Route(f"{API}/connections/{{cid}}/actions/resume", guarded(resume_connection), methods=["POST"]),
        Route(f"{API}/connections/{{cid}}/errors", guarded(connection_errors), methods=["GET"]),
        Route(f"{API}/mappings/{{mid}}", guarded(get_mapping), methods=["GET"]),
        Route(f"{API}/mappings/{{mid}}", guarded(edit_mapping), methods=["PUT"]),
        Route(f"{API}/mappings/{{mid}}/actions/reload", guarded(reload_mapping), methods=["POST"]),
        Route(f"{API}/mappings/{{mid}}/errors", guarded(mapping_errors), methods=["GET"]),
        Route("/__sandbox/state", guarded(force_state, scoped=False), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, psycopg.OperationalError: db_error},
    )
