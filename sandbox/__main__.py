"""Command line: ``python -m sandbox up | down | status | seed | faults | env``.

``up`` starts Postgres (embedded unless ``SANDBOX_POSTGRES_URL`` is set), the org's HTTPS server,
the Heroku Connect API and its sync loop in the background; ``down`` stops exactly what ``up``
started; ``eval "$(python -m sandbox env)"`` readies a shell to talk to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from sandbox import postgres, tls
from sandbox.config import API_VERSION, Settings
from sandbox.faults import KINDS, OPTIONS

# pgserver's import warns about XDG_RUNTIME_DIR on headless machines; it does not use that folder here.
warnings.filterwarnings("ignore", module="platformdirs")


def _state_path(s: Settings) -> Path:
    return s.home / "state.json"


def read_state(s: Settings) -> dict | None:
    path = _state_path(s)
    return json.loads(path.read_text()) if path.exists() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postgres(s: Settings) -> tuple[postgres.Postgres, bool]:
    """The server to use, starting the embedded one if needed; returns (server, started_by_us)."""
    ext = postgres.external()
    if ext:
        return ext, False
    was_running = postgres.is_running(s.pg_dir)
    return postgres.start(s.pg_dir, s.pg_port), not was_running


def _wait_https(url: str, ca: Path, timeout: float) -> bool:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, verify=str(ca), timeout=2).status_code < 500:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def cmd_up(s: Settings, args) -> int:
    state = read_state(s)
    if state and _pid_alive(state["pid"]):
        print(f"sandbox already running (pid {state['pid']}); 'python -m sandbox down' stops it")
        return 0
    s.home.mkdir(parents=True, exist_ok=True)
    pg, started_pg = _postgres(s)
    postgres.ensure_databases(pg)
    certs = tls.ensure_certificates(s.tls_dir)
    tls.ensure_connected_app_keys(s.tls_dir)
    log = open(s.home / "sandbox.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "serve", "--base-url", pg.base_url],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "SANDBOX_HOME": str(s.home), "SANDBOX_SF_PORT": str(s.sf_port),
             "SANDBOX_CONNECT_PORT": str(s.connect_port), "SANDBOX_SYNC_INTERVAL": str(s.sync_interval)},
    )
    state = {"pid": proc.pid, "base_url": pg.base_url, "embedded_postgres": pg.embedded,
             "started_postgres": started_pg, "pg_port": s.pg_port, "sf_port": s.sf_port,
             "connect_port": s.connect_port}
    _state_path(s).write_text(json.dumps(state, indent=2))
    ok = _wait_https(f"{s.instance_url}/__sandbox/health", certs.ca, 60) and _wait_https(
        f"{s.connect_api_url}/connections", certs.ca, 30)
    if not ok or proc.poll() is not None:
        print(f"sandbox failed to start; see {s.home / 'sandbox.log'}", file=sys.stderr)
        cmd_down(s, args)
        return 1
    try:
        setup_store(pg)  # after the server is up: Connect's `salesforce` schema exists, so its grants are made too
    except RuntimeError as err:
        print(err, file=sys.stderr)
        cmd_down(s, args)
        return 1
    where = f"embedded, {s.pg_dir}" if pg.embedded else "external"
    print(f"Postgres      {pg.base_url.rsplit('/', 1)[0]}  ({where})")
    print(f"Salesforce    {s.instance_url}  (user {s.username})")
    print(f"Connect API   {s.connect_api_url}  (discovery on {s.connect_url}; each mapping polls every "
          f"{s.sync_interval:g}s)")
    print(f"CA bundle     {certs.ca}")
    print("Ready your shell with:  eval \"$(python -m sandbox env)\"")
    return 0


def setup_store(pg: postgres.Postgres) -> None:
    """``python -m retention store-setup`` with the store owner's credential, as a data team runs it once: the
    store's DDL and the roles' grants (the pipeline's tasks may not run them)."""
    repo = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, (str(repo / "plugins"), os.environ.get("PYTHONPATH"))))
    out = subprocess.run([sys.executable, "-m", "retention", "--store-url", pg.store_url(), "store-setup"],
                         cwd=repo, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"python -m retention store-setup failed:\n{out.stdout}{out.stderr}")


def cmd_down(s: Settings, args) -> int:
    state = read_state(s)
    if not state:
        print("sandbox is not running")
        return 0
    pid = state["pid"]
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    stopped_pg = False
    if state.get("started_postgres"):
        stopped_pg = postgres.stop(s.pg_dir)
    _state_path(s).unlink(missing_ok=True)
    print(f"sandbox stopped (servers pid {pid}{', embedded Postgres' if stopped_pg else ''})")
    return 0


def _counts(url: str, schema: str) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    from sandbox.objects import OBJECTS

    out = {}
    with psycopg.connect(url) as conn:
        for obj in OBJECTS.values():
            where = sql.SQL(" WHERE NOT isdeleted") if schema == "org" else sql.SQL("")
            try:
                out[obj.name] = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}{}").format(sql.Identifier(schema, obj.table), where)
                ).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                conn.rollback()
    return out


def cmd_status(s: Settings, args) -> int:
    state = read_state(s)
    if not state or not _pid_alive(state["pid"]):
        print("sandbox is not running")
        return 3
    base = postgres.Postgres(state["base_url"], embedded=state["embedded_postgres"])
    org_counts = _counts(base.url("sandbox_org"), "org")
    mirror = _counts(base.store_url(), "salesforce")
    print(f"servers pid {state['pid']}: {s.instance_url}, {s.connect_api_url}")
    print(f"{'object':<20}{'org':>10}{'mirror':>10}")
    for name, n in org_counts.items():
        print(f"{name:<20}{n:>10}{mirror.get(name, 0):>10}")
    return 0


def _base(s: Settings) -> postgres.Postgres:
    state = read_state(s)
    if state:
        return postgres.Postgres(state["base_url"], embedded=state["embedded_postgres"])
    pg, _ = _postgres(s)
    postgres.ensure_databases(pg)
    return pg


def cmd_seed(s: Settings, args) -> int:
    import psycopg

    from sandbox import seed
    from sandbox.server import prepare_org

    url = _base(s).url("sandbox_org")
    prepare_org(url)
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        if args.reset:
            seed.clear(conn)
        counts = seed.seed(conn, contacts=args.contacts, seed=args.seed)
    took = time.monotonic() - started
    print("seeded " + ", ".join(f"{n} {k}" for k, n in counts.items()) + f" in {took:.1f}s")
    return 0


def cmd_faults(s: Settings, args) -> int:
    import requests

    url = f"{s.instance_url}/__sandbox/faults"
    verify = str(s.tls_dir / "ca.pem")
    if args.action == "set":
        body = {"kind": args.kind}
        for key in OPTIONS:
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        r = requests.post(url, json=body, verify=verify, timeout=10)
    elif args.action == "clear":
        r = requests.delete(url, params={"kind": args.kind} if args.kind else None, verify=verify, timeout=10)
    else:
        r = requests.get(url, verify=verify, timeout=10)
    if r.status_code != 200:
        print(r.json().get("error", r.text), file=sys.stderr)
        return 2
    faults = r.json()["faults"]
    print("\n".join(json.dumps(f) for f in faults) if faults else "no faults active")
    return 0


def env_vars(s: Settings, base_url: str) -> dict[str, str]:
    """Everything a shell, Airflow or a test needs to reach the sandbox; Airflow's connections as
    ``AIRFLOW_CONN_<ID>`` (JSON), the way airflow_settings.yaml expects secrets to arrive."""
    pg = postgres.Postgres(base_url, embedded=True)
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    keys = tls.ConnectedAppKeys.in_folder(s.tls_dir)
    # OAuth 2.0 JWT bearer flow, as against a real org (SOAP login() is gone from API 65.0): the stock hook signs
    # an assertion with the connected app's private key. The domain points simple-salesforce's token URL,
    # https://{domain}.salesforce.com/services/oauth2/token, at the sandbox (the fragment is never sent).
    salesforce_conn = {
        "conn_type": "salesforce",
        "login": s.username,
        "extra": {"consumer_key": s.consumer_key, "private_key_file_path": str(keys.private_key),
                  "domain": s.login_domain, "version": API_VERSION},
    }
    # The pipeline's own credential (least privilege, see `python -m retention store-setup`), not the store's
    # default credential, which owns the database and stays the admin's (RETENTION_STORE_URL).
    store_conn = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": postgres.PIPELINE,
                  "schema": postgres.STORE}
    # The discovery form, as in production: the hook finds the connection and its region's API root
    # from the app's name (the sandbox's Connect server plays hc-central.heroku.com too).
    connect_conn = {"conn_type": "heroku_connect", "password": s.connect_token,
                    "extra": {"app_name": s.connect_app_name, "discovery_url": s.connect_url}}
    return {
        "SANDBOX_HOME": str(s.home),
        "SANDBOX_PG_PORT": str(s.pg_port),
        "SANDBOX_SF_PORT": str(s.sf_port),
        "SANDBOX_CONNECT_PORT": str(s.connect_port),
        "REQUESTS_CA_BUNDLE": str(s.tls_dir / "ca.pem"),
        "SALESFORCE_INSTANCE_URL": s.instance_url,
        "SALESFORCE_USERNAME": s.username,
        "SALESFORCE_PASSWORD": s.password,
        "SALESFORCE_SECURITY_TOKEN": s.security_token,
        "SALESFORCE_CONSUMER_KEY": s.consumer_key,
        "SALESFORCE_CONSUMER_SECRET": s.consumer_secret,
        "SALESFORCE_PRIVATE_KEY_FILE": str(keys.private_key),
        "SALESFORCE_API_VERSION": API_VERSION,
        "SANDBOX_ORG_URL": pg.url("sandbox_org"),
        # The store owner's credential (Heroku's default): the admin's, for store-setup and for looking inside.
        "RETENTION_STORE_URL": pg.store_url(),
        # The pipeline's credential, as the tasks connect (AIRFLOW_CONN_RETENTION_STORE).
        "RETENTION_PIPELINE_URL": pg.store_url(postgres.PIPELINE),
        # The External Object views' credential: it reads retention_external's views and nothing else.
        "RETENTION_EXTERNAL_URL": pg.store_url(postgres.EXTERNAL),
        # An analyst's credential: it reads the cache schema and nothing else.
        "RETENTION_ANALYST_URL": pg.store_url(postgres.ANALYST),
        "HEROKU_CONNECT_TOKEN": s.connect_token,
        "HEROKU_CONNECT_APP_NAME": s.connect_app_name,
        "HEROKU_CONNECT_DISCOVERY_URL": s.connect_url,
        # What discovery finds (the region's API root and the connection id), for scripts and tests.
        "HEROKU_CONNECT_API_URL": s.connect_api_url,
        "HEROKU_CONNECT_CONNECTION_ID": s.connection_id,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url("airflow", driver="postgresql+psycopg2"),
        "AIRFLOW_CONN_SALESFORCE_DEFAULT": json.dumps(salesforce_conn),
        "AIRFLOW_CONN_RETENTION_STORE": json.dumps(store_conn),
        "AIRFLOW_CONN_HEROKU_CONNECT_DEFAULT": json.dumps(connect_conn),
        # The sandbox's keyed-hash secret; a real deployment keeps its own in a secrets backend.
        "AIRFLOW_CONN_RETENTION_HASH_KEY": json.dumps({"conn_type": "generic", "password": s.hash_key}),
        # The key of encrypted retained fields (retain.encrypt), likewise the sandbox's own.
        "AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY": json.dumps({"conn_type": "generic", "password": s.encryption_key}),
    }


def cmd_env(s: Settings, args) -> int:
    state = read_state(s)
    if not state:
        print("# sandbox is not running: start it with 'python -m sandbox up'", file=sys.stderr)
        return 3
    for key, value in env_vars(s, state["base_url"]).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_serve(s: Settings, args) -> int:
    from sandbox.server import serve

    pg = postgres.Postgres(args.base_url, embedded=False)
    serve(s, pg.url("sandbox_org"), pg.store_url())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Postgres, the org and Connect servers and the sync loop")
    sub.add_parser("down", help="stop what 'up' started")
    sub.add_parser("status", help="show what runs and record counts in the org and the mirror")
    seed = sub.add_parser("seed", help="fill the org with deterministic sample data")
    seed.add_argument("--contacts", type=int, default=3000, help="number of contacts (others scale with it)")
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--reset", action="store_true", help="empty the org first")
    faults = sub.add_parser("faults", help="list, set or clear injected faults")
    faults.add_argument("action", choices=("list", "set", "clear"))
    faults.add_argument("kind", nargs="?", help=" | ".join(KINDS))
    faults.add_argument("--count", type=int, help="only the next N requests (rows for record_failures)")
    faults.add_argument("--rate", type=float, help="fraction of requests (or rows) that fail")
    faults.add_argument("--status", type=int, help="500 or 503 for server_error")
    faults.add_argument("--seconds", type=float, help="delay for slow, slow_job's least time a batch takes")
    faults.add_argument("--code", help="per-row error code for record_failures")
    faults.add_argument("--seed", type=int, help="random seed for rate-based faults")
    faults.add_argument("--text", help="what nul_in_results sends as a NUL character")
    sub.add_parser("env", help="print shell exports for the running sandbox")
    serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--base-url", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    if args.command == "faults" and args.action == "set" and not args.kind:
        parser().error("faults set needs a kind")
    return {
        "up": cmd_up, "down": cmd_down, "status": cmd_status, "seed": cmd_seed, "faults": cmd_faults,
        "env": cmd_env, "serve": cmd_serve,
    }[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
