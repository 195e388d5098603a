"""The subset of the Heroku Connect API v3 that the product's sync checks call, served over the sandbox mirror.

Shapes follow the real API (see the reference notes, section 2): a connection with its mappings,
mapping states and counts, pause/resume/reload actions answering 202, and the write errors of the last
24 h. States and counts come live from ``ConnectSync``, so a sensor polling this API sees exactly
what the mirror holds. Handlers are plain functions: Starlette runs them in its thread pool, which
suits the blocking psycopg calls behind them.
"""

from __future__ import annotations

import datetime as dt
import hmac
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

    from sandbox.connect import ConnectSync

API = "/api/v3"


def mapping_id(connection_id: str, object_name: str) -> str:
    """A mapping's id: stable per connection and object, so clients may cache it across restarts."""
    try:
        namespace = uuid.UUID(connection_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, connection_id)
    return str(uuid.uuid5(namespace, object_name))


def _iso(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"id": code, "message": message}, status_code=status)


def create_app(
    sync: ConnectSync,
    *,
    token: str,
    connection_id: str,
    app_name: str = "retention-sandbox",
    org_id: str,
) -> Starlette:
    """The Connect API for one connection whose mappings are ``sync``'s objects.

    :param sync: the sync loop that owns the mirror.
    :param token: the bearer token clients must send.
    :param connection_id: the connection's id (a UUID, as Heroku issues them).
    :param app_name: the Heroku app the connection belongs to (``?app=`` filter).
    :param org_id: the Salesforce org id reported as ``organization_id``.
    """
    by_mapping_id = {mapping_id(connection_id, obj.name): obj for obj in sync.objects}
    store = urlsplit(sync.store_url)
    created_at = dt.datetime.now(dt.UTC)

    def authorized(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def guarded(handler):
        """Check the bearer token before the handler; the wrapper stays sync so it runs in the thread pool."""

        def endpoint(request: Request):
            if not authorized(request):
                return _error(401, "unauthorized", "Invalid credentials provided.")
            return handler(request)

        endpoint.__name__ = handler.__name__
        return endpoint

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + API

    def mapping_json(request: Request, obj, state: dict, paused: bool) -> dict:
        mid = mapping_id(connection_id, obj.name)
        polling = sync.interval
        return {
            "id": mid,
            "object_name": obj.name,
            "state": state["state"],
            "state_description": state["state_description"],
            "config": {
                "access": "read_only",
                "sf_notify_enabled": False,
                "sf_polling_seconds": int(polling) if float(polling).is_integer() else polling,
                "sf_max_daily_api_calls": 30000,
                "fields": {f.name: {} for f in obj.fields},
                "indexes": {"Id": {"unique": True}, "SystemModstamp": {"unique": False}},
                "revision": 1,
                "applied_at": _iso(state["created_at"]),
            },
            "counts": state["counts"],
            "db_count_date": _iso(state["db_count_date"]),
            "salesforce_count_date": _iso(state["salesforce_count_date"]),
            "actively_writing": False,
            "is_polling": not paused,
            "has_hc_columns": True,
            "detail_url": f"{base(request)}/mappings/{mid}",
            "errors_url": f"{base(request)}/mappings/{mid}/errors",
            "schema_url": f"{base(request)}/connections/{connection_id}/schemas/{obj.name}",
            "created_at": _iso(state["created_at"]),
            "updated_at": _iso(state["last_synced_at"] or state["created_at"]),
        }

    def connection_json(request: Request, *, deep: bool) -> dict:
        state = sync.connection_state()
        out = {
            "id": connection_id,
            "name": f"{app_name}:herokuconnect",
            "resource_name": "herokuconnect-sandbox",
            "app_name": app_name,
            "app_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{app_name}.herokuapp.com")),
            "addon_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"addon:{connection_id}")),
            "schema_name": sync.schema,
            "db_key": "DATABASE_URL",
            "database": {"host": store.hostname, "database": store.path.lstrip("/"), "port": store.port or 5432},
            "organization_id": org_id,
            "state": state,
            "mappings_summary_state": None,
            "detail_url": f"{base(request)}/connections/{connection_id}",
            "region_url": str(request.base_url).rstrip("/"),
            "created_at": _iso(created_at),
            "plan": "enterprise",
            "sf_info": {"organization_id": org_id, "environment": "sandbox", "api_version": "59.0"},
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
                        "created_at": now, "last_synced_at": None}
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
        if app and app != app_name:
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
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _error(exc.status_code, code, exc.detail)

    async def db_error(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        return _error(503, "db_unavailable", "The database of the connection is unavailable.")

    routes = [
        Route(f"{API}/connections", guarded(list_connections), methods=["GET"]),
        Route(f"{API}/connections/{{cid}}", guarded(get_connection), methods=["GET"]),
        Route(f"{API}/connections/{{cid}}/actions/pause", guarded(pause_connection), methods=["POST"]),
        Route(f"{API}/connections/{{cid}}/actions/resume", guarded(resume_connection), methods=["POST"]),
        Route(f"{API}/connections/{{cid}}/errors", guarded(connection_errors), methods=["GET"]),
        Route(f"{API}/mappings/{{mid}}", guarded(get_mapping), methods=["GET"]),
        Route(f"{API}/mappings/{{mid}}/actions/reload", guarded(reload_mapping), methods=["POST"]),
        Route(f"{API}/mappings/{{mid}}/errors", guarded(mapping_errors), methods=["GET"]),
        Route("/__sandbox/state", guarded(force_state), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, psycopg.OperationalError: db_error},
    )
