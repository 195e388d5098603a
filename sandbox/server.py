"""The sandbox's long-running process: the org's HTTPS server, the Connect API server and the sync loop.

``python -m sandbox up`` starts this in the background (``python -m sandbox serve``); it runs until
SIGTERM, then stops its servers and the sync loop cleanly.
"""

from __future__ import annotations

import logging
import signal
import threading

from sandbox import bulk1, bulk2, connect, connect_api, org, results, tls
from sandbox.config import Settings
from sandbox.salesforce_api import OrgService, create_app

log = logging.getLogger("sandbox")


def prepare_org(org_url: str) -> None:
    """Create the org's tables and the query result schema (idempotent)."""
    import psycopg

    with psycopg.connect(org_url) as conn:
        org.create_schema(conn)
        results.create_schema(conn)
        bulk2.create_schema(conn)


def _uvicorn(app, port: int, certs: tls.Certificates):
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certs.cert),
        ssl_keyfile=str(certs.key),
        log_level="warning",
        access_log=False,
        # Bulk 1.0 clients poll from thread pools; keep idle keep-alive connections around.
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(settings: Settings, org_url: str, store_url: str) -> None:
    """Run both servers and the sync loop until SIGTERM or SIGINT."""
    from psycopg_pool import ConnectionPool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    prepare_org(org_url)
    certs = tls.ensure_certificates(settings.tls_dir)
    tls.ensure_connected_app_keys(settings.tls_dir)
    pool = ConnectionPool(org_url, min_size=2, max_size=20, open=True, name="org")
    svc = OrgService(settings, pool)
    sf_app = create_app(svc, extra_routes=bulk2.routes() + bulk1.routes())

    sync = connect.ConnectSync(
        org_url, store_url, mappings=settings.connect_mappings, interval=settings.sync_interval,
        org_id=settings.org_id,
    )
    sync.setup()
    # One server plays Heroku Connect's discovery service and the connection's region: its base URL is
    # both the discovery URL and the connection's region_url.
    connect_app = connect_api.create_app(
        sync, tokens={settings.connect_token: settings.connect_user_email}, connection_id=settings.connection_id,
        app_name=settings.connect_app_name, resource_name=settings.connect_resource_name, org_id=settings.org_id,
    )

    stop = threading.Event()
    servers = [_uvicorn(sf_app, settings.sf_port, certs), _uvicorn(connect_app, settings.connect_port, certs)]
    threads = [threading.Thread(target=s.run, name=f"http-{i}", daemon=True) for i, s in enumerate(servers)]
    threads.append(threading.Thread(target=sync.run, args=(stop,), name="connect-sync", daemon=True))

    def shutdown(signum, frame):
        log.info("stopping (signal %s)", signum)
        stop.set()
        for s in servers:
            s.should_exit = True

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    for t in threads:
        t.start()
    log.info("org on %s, Connect discovery and API on %s", settings.instance_url, settings.connect_url)
    while not stop.wait(0.5):
        if not all(t.is_alive() for t in threads):
            log.error("a sandbox thread died; stopping")
            shutdown("thread-died", None)
    for t in threads:
        t.join(timeout=15)
    pool.close()
