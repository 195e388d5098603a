"""The retention store: the Postgres database holding Connect's mirror, the cache, staging and the ledger.

Every statement the pipeline runs against the store goes through this hook, so transactions and
connection details live in one place. Connections are psycopg 3 (COPY streaming, ``psycopg.sql``).
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib.resources import files
from typing import TYPE_CHECKING

from airflow.providers.postgres.hooks.postgres import PostgresHook

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg

# The DDL ships inside the package (retention/sql/*.sql, package data), so an installed wheel applies it too.
SQL_DIR = files("retention") / "sql"
MIRROR_SCHEMA = "salesforce"
CACHE_SCHEMA = "cache"
LEDGER_SCHEMA = "retention"
STAGING_SCHEMA = "retention_staging"


class RetentionStoreHook(PostgresHook):
    """The store database.

    :param postgres_conn_id: Airflow connection of the store (a Postgres connection).
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "retention_store"
    conn_type = "postgres"
    hook_name = "Retention store"

    def __init__(self, postgres_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """PostgresHook's own psycopg 3 connection (the connection's extras, IAM tokens and all); commits on
        success, rolls back on error, always closes."""
        conn = self.get_conn()
        conn.autocommit = autocommit
        with conn:
            yield conn

    def check_setup(self) -> None:
        """Fail before touching anything unless the grants the pipeline relies on hold. The DDL and the grants
        are an admin's step (``python -m retention store-setup``): tasks connect with the pipeline role,
        which may not run them."""
        from retention import store_setup

        with self.connect() as conn:
            store_setup.require(conn, MIRROR_SCHEMA)
