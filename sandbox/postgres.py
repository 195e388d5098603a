"""Embedded Postgres from the ``pgserver`` wheel, listening on 127.0.0.1 TCP.

pgserver's own launcher is socket-only; Airflow connections and Great Expectations want an ordinary
``postgresql://host:port/db`` URL, so we drive the wheel's ``initdb``/``pg_ctl`` ourselves. Postgres
refuses to run as root: as root the server runs as the system user ``pgserver`` (created if missing),
the same way pgserver does it.

Set ``SANDBOX_POSTGRES_URL`` (a URL to any database on an existing server, with rights to create
databases) to use an external Postgres instead; nothing is started then.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# One database per role: Airflow's metadata, the retention store (which also holds the Heroku
# Connect mirror, as on Heroku), and the sandbox org's own data.
DATABASES = ("airflow", "retention_store", "sandbox_org")
STORE = "retention_store"
# The store's credentials as Heroku Postgres has them ("Heroku Postgres Credentials", Dev Center). The default
# credential, which Heroku Connect and the pipeline use, "corresponds to a permissive role that is one step below
# the superuser ... the owner of the database": it creates schemas and objects, GRANTs on what it owns, is a
# member of pg_monitor, pg_read_all_settings, pg_read_all_stats and pg_signal_backend; nothing says it may manage
# roles, and it is not a superuser, so here it has no CREATEROLE (the stricter reading). Other credentials are
# made by an admin (`heroku pg:credentials:create --name retention_analyst`) and "cannot read from or write to
# any of your tables" until granted.
STORE_OWNER = "store_owner"
ANALYST = "retention_analyst"
# The role the pipeline's tasks connect as, another such credential. Heroku gives the default credential admin
# option on the others (`pg:credentials:repair-default` restores it), so the owner may act for it in store-setup.
PIPELINE = "retention_pipeline"
# Reads the Salesforce External Object views only (an OData bridge's credential).
EXTERNAL = "retention_external"

# Embedded server tuning: a throw-away local server, so durability is traded for seeding speed.
_SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c shared_buffers=256MB -c max_connections=200 -c max_wal_size=4GB"
)
_RUN_AS = "pgserver"


@dataclass(frozen=True)
class Postgres:
    """Where the Postgres server is; ``url(db)`` gives a URL for one of its databases."""

    base_url: str
    embedded: bool
    data_dir: Path | None = None

    def url(self, database: str, driver: str = "postgresql", *, user: str | None = None) -> str:
        parts = urlsplit(self.base_url)
        netloc = parts.netloc if user is None else f"{user}@{parts.hostname}:{parts.port}"
        return urlunsplit((driver, netloc, "/" + database, parts.query, ""))

    def store_url(self, user: str = STORE_OWNER, driver: str = "postgresql") -> str:
        """The retention store as its default credential (or another credential) reaches it."""
        return self.url(STORE, driver, user=user)


def _bin(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": _RUN_AS, "group": _RUN_AS, "extra_groups": []}


def _prepare_root(folder: Path) -> None:
    """As root, let the unprivileged server user reach the binaries and own the data folder."""
    if os.geteuid() != 0:
        return
    import pwd
    import stat

    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(_RUN_AS)
    ensure_prefix_permissions(folder)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    entry = pwd.getpwnam(_RUN_AS)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg(args: list[str], folder: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=folder, capture_output=True, text=True, **_run_as_kwargs(), **kwargs
    )


def is_running(folder: Path) -> bool:
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        return False
    return _pg([_bin("pg_ctl"), "-D", str(data), "status"], folder).returncode == 0


def start(folder: Path, port: int) -> Postgres:
    """Start (initialising on first use) the embedded server in ``folder``; idempotent."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    base = Postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", embedded=True, data_dir=data)
    if is_running(folder):
        return base
    _prepare_root(folder)
    if not (data / "PG_VERSION").exists():
        out = _pg([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--locale=C.UTF-8"], folder)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed in {data}:\n{out.stdout}{out.stderr}")
    options = f"-h 127.0.0.1 -p {port} -k {folder} {_SERVER_OPTIONS}"
    out = _pg([_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"),
               "-w", "-t", "60", "start"], folder)
    if out.returncode != 0:
        log_file = folder / "postgres.log"
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else "(no server log written)"
        raise RuntimeError(f"Postgres did not start on port {port}:\n{out.stdout}{out.stderr}\n{log}")
    return base


def stop(folder: Path) -> bool:
    """Stop the embedded server in ``folder``; False if it was not running."""
    folder = folder.resolve()
    if not is_running(folder):
        return False
    out = _pg([_bin("pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "-t", "60", "stop"], folder)
    if out.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed:\n{out.stdout}{out.stderr}")
    return True


def external() -> Postgres | None:
    url = os.environ.get("SANDBOX_POSTGRES_URL")
    return Postgres(url, embedded=False) if url else None


def ensure_databases(pg: Postgres, names: tuple[str, ...] = DATABASES) -> None:
    """Create the project's databases if they are missing."""
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg.connect(pg.base_url, autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        if STORE_OWNER not in roles:
            conn.execute(f"CREATE ROLE {STORE_OWNER} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION "
                         "NOBYPASSRLS IN ROLE pg_monitor, pg_read_all_settings, pg_read_all_stats, pg_signal_backend")
        if ANALYST not in roles:
            conn.execute(f"CREATE ROLE {ANALYST} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        if EXTERNAL not in roles:
            conn.execute(f"CREATE ROLE {EXTERNAL} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        if PIPELINE not in roles:
            conn.execute(f"CREATE ROLE {PIPELINE} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
            conn.execute(f"GRANT {PIPELINE} TO {STORE_OWNER} WITH ADMIN OPTION")
        for name in names:
            if name not in have:
                owner = f" OWNER {STORE_OWNER}" if name == STORE else ""
                conn.execute(f'CREATE DATABASE "{name}"{owner}')
    if STORE in names:
        with psycopg.connect(pg.url(STORE), autocommit=True) as store:
            store.execute(f"ALTER SCHEMA public OWNER TO {STORE_OWNER}")
