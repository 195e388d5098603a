"""Heroku Connect stand-in: mirrors the sandbox org's objects into schema ``salesforce`` of the store.

It builds the mirror the way Heroku Connect does (system tables, ``sfid``, ``_hc_lastop``, the status
and trigger-log triggers keyed on ``get_xmlbinary()``), so code written against this mirror runs
unchanged against a real Connect schema. Our own sessions run with ``xmlbinary = 'hex'`` and are
therefore Connect ops; any plain client write (default ``base64``) lands in ``_trigger_log``, which is
how the product proves the mirror is read-only to it.

Like Connect, each mapping selects its fields (only those become columns; Connect's required fields are
always added), polls on ``SystemModstamp`` on its own interval (``sf_polling_seconds``), and reports its
state and counts as of its last poll: ``DATA_SYNCED`` says "all rows have been synced since the last poll"
(https://devcenter.heroku.com/articles/mapping-states-reference), nothing about the org since. Deletions
come from ``org.deletions``. Rows are streamed with COPY (org -> temp table in the store -> one upsert),
so a million-row load never sits in memory. Mapping configuration, watermarks and the add-on's access
list live in the store (``<schema>._sandbox_mappings``, ``_hcmeta``), so a restarted loop resumes where
it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from sandbox.objects import Field, SObject, get_object

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

UTC = dt.UTC
# Rows whose transaction committed after our read can carry a SystemModstamp below the watermark;
# each poll re-reads from the previous read's horizon minus this margin (the upsert is idempotent).
OVERLAP = dt.timedelta(seconds=2)
# Trigger-log columns Connect never reports as changes (they are its own bookkeeping).
EXCLUDED_COLUMNS = ("_hc_lastop", "_hc_err")
HCVER = 12
# Fields every mapping has: "Some fields in the list are pre-selected and can't be removed from the mapping
# as they're required for Heroku Connect to perform synchronization"
# (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings). That page does not name them;
# Id (the sfid column), SystemModstamp (what Connect polls on: https://devcenter.heroku.com/articles/herokuconnect)
# and IsDeleted are the ones besides the removable CreatedDate and Name in a mapping as the Connect API
# returns it (heroku/heroku-connect-plugin's test fixture). A PUT that leaves them out gets them back.
REQUIRED_FIELDS = ("Id", "SystemModstamp", "IsDeleted")
# Columns of a mapped table that are not mapped fields.
SYSTEM_COLUMNS = ("id", "sfid", "_hc_lastop", "_hc_err")
# Mapping states in which the next poll (re)loads rows rather than reading changes; such a mapping is
# polled at once, whatever its interval.
LOADING_STATES = ("INITIAL", "RELOAD_TABLE", "RESYNC")
# The longest the loop sleeps between checks of the mappings' schedules.
MAX_IDLE = 1.0

# Salesforce field type -> column type in a Connect mirror (strings keep their length).
_MIRROR_TYPES = {
    "id": "varchar(18)",
    "reference": "varchar(18)",
    "textarea": "text",
    "date": "date",
    "datetime": "timestamp",
    "boolean": "boolean",
    "double": "double precision",
    "currency": "double precision",
    "percent": "double precision",
    "int": "integer",
}


class SyncError(RuntimeError):
    """One or more mappings failed in a poll; each failure is recorded in its mapping's state."""


class MappingError(ValueError):
    """A mapping configuration Connect would refuse (a field the object does not have)."""


def mirror_type(f: Field) -> str:
    """The Postgres type Heroku Connect gives a field's column."""
    return _MIRROR_TYPES.get(f.type) or f"varchar({f.describe()['length'] or 255})"


def mapping_fields(obj: SObject, names: Iterable[str]) -> list[Field]:
    """A mapping's fields, in the object's order: ``names`` (any case) plus Connect's required fields."""
    by_name = {f.name.lower(): f for f in obj.fields}
    names = list(names)
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise MappingError(f"{obj.name} has no field {', '.join(unknown)}")
    wanted = {n.lower() for n in (*names, *REQUIRED_FIELDS)}
    return [f for f in obj.fields if f.name.lower() in wanted]


def mirrored_fields(fields: Iterable[Field]) -> list[Field]:
    """The mapping's fields that are columns: all but Id, which Connect stores as ``sfid``."""
    return [f for f in fields if f.name != "Id"]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _schema_ddl(s: str, channel: str) -> list[str]:
    """System tables and helper functions, as Connect installs them (hstore emulated in text)."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}._hcmeta (
               id serial PRIMARY KEY, hcver integer, org_id varchar(50), details text)""",
        f"""CREATE TABLE IF NOT EXISTS {s}._trigger_log (
               id serial PRIMARY KEY, txid bigint, created_at timestamptz DEFAULT now(),
               updated_at timestamptz DEFAULT now(), processed_at timestamptz, processed_tx bigint,
               state varchar(8), action varchar(7), table_name varchar(128), record_id integer,
               sfid varchar(18), old text, "values" text, sf_result integer, sf_message text)""",
        f"CREATE INDEX IF NOT EXISTS _trigger_log_idx_created_at ON {s}._trigger_log (created_at)",
        f"CREATE INDEX IF NOT EXISTS _trigger_log_idx_state_id ON {s}._trigger_log (state, id)",
        f"""CREATE INDEX IF NOT EXISTS _trigger_log_idx_state_table_name ON {s}._trigger_log (state, table_name)
               WHERE state IN ('NEW', 'PENDING')""",
        f"""CREATE TABLE IF NOT EXISTS {s}._trigger_log_archive (
               id integer PRIMARY KEY, txid bigint, created_at timestamptz, updated_at timestamptz,
               processed_at timestamptz, processed_tx bigint, state varchar(8), action varchar(7),
               table_name varchar(128), record_id integer, sfid varchar(18), old text, "values" text,
               sf_result integer, sf_message text)""",
        f"CREATE INDEX IF NOT EXISTS _trigger_log_archive_idx_created_at ON {s}._trigger_log_archive (created_at)",
        f"CREATE INDEX IF NOT EXISTS _trigger_log_archive_idx_record_id ON {s}._trigger_log_archive (record_id)",
        f"""CREATE INDEX IF NOT EXISTS _trigger_log_archive_idx_state_table_name
               ON {s}._trigger_log_archive (state, table_name) WHERE state = 'FAILED'""",
        f"""CREATE TABLE IF NOT EXISTS {s}._sf_event_log (
               id serial PRIMARY KEY, table_name varchar(128), action varchar(7),
               synced_at timestamptz DEFAULT now(), sf_timestamp timestamptz, sfid varchar(20),
               record text, processed boolean)""",
        f"CREATE INDEX IF NOT EXISTS idx__sf_event_log_comp_key ON {s}._sf_event_log (table_name, synced_at)",
        f"CREATE INDEX IF NOT EXISTS idx__sf_event_log_sfid ON {s}._sf_event_log (sfid)",
        # Not part of Connect: the stand-in's own per-mapping configuration, watermarks and bookkeeping.
        # ``fields``/``polling_seconds`` are the mapping as configured now (the settings, or a PUT since);
        # ``configured_*`` what the sandbox settings said when last applied, so a changed setting wins
        # over an earlier edit. Counts and ``polled_at`` are as of the last successful poll.
        f"""CREATE TABLE IF NOT EXISTS {s}._sandbox_mappings (
               object_name text PRIMARY KEY, table_name text NOT NULL,
               state text NOT NULL DEFAULT 'INITIAL',
               modstamp_watermark timestamptz, deletion_watermark timestamptz, read_at timestamptz,
               created_at timestamptz NOT NULL DEFAULT now(), loaded_at timestamptz,
               last_poll_at timestamptz, last_synced_at timestamptz, last_changed_at timestamptz,
               last_error text, last_error_at timestamptz,
               polls bigint NOT NULL DEFAULT 0, rows_upserted bigint NOT NULL DEFAULT 0,
               rows_deleted bigint NOT NULL DEFAULT 0, last_upserted bigint NOT NULL DEFAULT 0,
               last_deleted bigint NOT NULL DEFAULT 0, db_count bigint)""",
        *(f"ALTER TABLE {s}._sandbox_mappings ADD COLUMN IF NOT EXISTS {col}" for col in (
            "fields text[]", "configured_fields text[]", "polling_seconds double precision",
            "configured_polling double precision", "revision integer NOT NULL DEFAULT 1", "applied_at timestamptz",
            "polled_at timestamptz", "sf_count bigint", "counted_at timestamptz", "pending bigint",
            "errors bigint")),
        f"""CREATE OR REPLACE FUNCTION {s}.get_xmlbinary() RETURNS varchar LANGUAGE plpgsql AS $$
               BEGIN RETURN current_setting('xmlbinary'); END $$""",
        f"""CREATE OR REPLACE FUNCTION {s}.tlog_notify_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_notify('{channel}', 'ping'); RETURN NEW; END $$""",
        f"""CREATE OR REPLACE TRIGGER tlog_insert_trigger AFTER INSERT ON {s}._trigger_log
               FOR EACH ROW EXECUTE FUNCTION {s}.tlog_notify_trigger()""",
        # hstore's text form ("k"=>"v", "k2"=>NULL) of a row given as jsonb, with each value in its
        # column type's text output, as hstore(record) would produce it (pgserver has no hstore).
        rf"""CREATE OR REPLACE FUNCTION {s}._hc_hstore(rel regclass, j jsonb) RETURNS text
               LANGUAGE sql STABLE AS $$
               SELECT string_agg(
                   '"' || replace(replace(a.attname, '\', '\\'), '"', '\"') || '"=>' ||
                   CASE WHEN jsonb_typeof(j -> a.attname) = 'null' THEN 'NULL'
                        ELSE '"' || replace(replace(
                            CASE a.atttypid
                              WHEN 'boolean'::regtype THEN
                                CASE WHEN (j ->> a.attname)::boolean THEN 't' ELSE 'f' END
                              WHEN 'timestamp'::regtype THEN ((j ->> a.attname)::timestamp)::text
                              WHEN 'timestamptz'::regtype THEN ((j ->> a.attname)::timestamptz)::text
                              ELSE j ->> a.attname
                            END, '\', '\\'), '"', '\"') || '"'
                   END, ', ' ORDER BY a.attnum)
               FROM pg_attribute a
               WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND j ? a.attname
               $$""",
    ]


def _mirror_ddl(s: str, obj: SObject, fields: list[Field]) -> list[str]:
    """One mapped table with Connect's system columns, indexes and triggers (columns of ``fields``)."""
    t = obj.table
    table = f"{s}.{_q(t)}"
    cols = ", ".join(f"{_q(f.column)} {mirror_type(f)}" for f in mirrored_fields(fields))
    excluded = ", ".join(f"'{c}'" for c in EXCLUDED_COLUMNS)
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
               id serial PRIMARY KEY, sfid varchar(18), {cols}, _hc_lastop varchar(32), _hc_err text)""",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {_q(f'hcu_idx_{t}_sfid')} ON {table} (sfid)",
        f"CREATE INDEX IF NOT EXISTS {_q(f'hc_idx_{t}_systemmodstamp')} ON {table} (systemmodstamp)",
        f"""CREATE OR REPLACE FUNCTION {s}.{_q(f'hc_{t}_status')}() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF {s}.get_xmlbinary() = 'base64' THEN  -- user op
                   NEW._hc_lastop := 'PENDING';
                   NEW._hc_err := NULL;
                   RETURN NEW;
                 END IF;
                 -- Connect op: keep an explicit new _hc_lastop, otherwise the row is synced.
                 IF TG_OP = 'UPDATE' AND NEW._hc_lastop IS NOT NULL
                    AND NEW._hc_lastop IS DISTINCT FROM OLD._hc_lastop THEN
                   RETURN NEW;
                 END IF;
                 NEW._hc_lastop := 'SYNCED';
                 NEW._hc_err := NULL;
                 RETURN NEW;
               END $$""",
        f"""CREATE OR REPLACE FUNCTION {s}.{_q(f'hc_{t}_logger')}() RETURNS trigger LANGUAGE plpgsql AS $$
               DECLARE
                 excluded_cols text[] := ARRAY[{excluded}];
                 new_row jsonb;
                 old_row jsonb;
                 changed jsonb;
                 log_state varchar(8) := 'READONLY';  -- every mapping here is read-only
                 log_record_id integer;
                 log_sfid varchar(18);
                 log_old text;
                 log_values text;
               BEGIN
                 IF TG_OP = 'INSERT' THEN
                   new_row := to_jsonb(NEW) - excluded_cols;
                   log_record_id := NEW.id;
                   log_values := {s}._hc_hstore(TG_RELID, new_row);
                 ELSIF TG_OP = 'UPDATE' THEN
                   new_row := to_jsonb(NEW) - excluded_cols;
                   old_row := to_jsonb(OLD) - excluded_cols;
                   SELECT coalesce(jsonb_object_agg(e.key, e.value), jsonb_build_object()) INTO changed
                     FROM jsonb_each(new_row) e WHERE old_row -> e.key IS DISTINCT FROM e.value;
                   log_record_id := NEW.id;
                   log_sfid := OLD.sfid;
                   log_old := {s}._hc_hstore(TG_RELID, old_row);
                   log_values := coalesce({s}._hc_hstore(TG_RELID, changed), '');
                   IF changed = jsonb_build_object() THEN
                     log_state := 'IGNORE';
                   END IF;
                 ELSE
                   old_row := to_jsonb(OLD) - excluded_cols;
                   log_record_id := OLD.id;
                   log_sfid := OLD.sfid;
                   log_old := {s}._hc_hstore(TG_RELID, old_row);
                   IF OLD.sfid IS NULL THEN
                     log_state := 'IGNORE';
                   END IF;
                 END IF;
                 INSERT INTO {s}._trigger_log
                   (txid, created_at, updated_at, state, action, table_name, record_id, sfid, old, "values")
                 VALUES (txid_current(), clock_timestamp(), clock_timestamp(), log_state, TG_OP, TG_TABLE_NAME,
                         log_record_id, log_sfid, log_old, log_values);
                 RETURN NULL;
               END $$""",
        f"""CREATE OR REPLACE TRIGGER {_q(f'hc_{t}_status_trigger')} BEFORE INSERT OR UPDATE ON {table}
               FOR EACH ROW EXECUTE FUNCTION {s}.{_q(f'hc_{t}_status')}()""",
        f"""CREATE OR REPLACE TRIGGER {_q(f'hc_{t}_logtrigger')} AFTER INSERT OR DELETE OR UPDATE ON {table}
               FOR EACH ROW WHEN ({s}.get_xmlbinary() = 'base64')
               EXECUTE FUNCTION {s}.{_q(f'hc_{t}_logger')}()""",
    ]


class ConnectSync:
    """Polls the org and applies its changes to the mirror, one read-only mapping per object.

    :param org_url: URL of the sandbox org database (schema ``org``).
    :param store_url: URL of the retention store database that holds the mirror.
    :param mappings: sObject API name -> the fields its mapping selects (Connect's required fields are added).
    :param interval: a new mapping's polling interval (``sf_polling_seconds``), in seconds. Real Connect's
        default is 600 and the demo plan's minimum 10 minutes; the sandbox passes seconds (SANDBOX_SYNC_INTERVAL)
        on purpose, to keep demo and tests fast, and any positive interval is accepted.
    :param schema: the Connect schema in the store.
    :param org_id: the Salesforce org id written to ``_hcmeta``.
    """

    def __init__(
        self,
        org_url: str,
        store_url: str,
        *,
        mappings: Mapping[str, Iterable[str]],
        interval: float = 2.0,
        schema: str = "salesforce",
        org_id: str,
    ):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"unsupported schema name {schema!r}")
        resolved, configured = [], {}
        for name, fields in mappings.items():
            obj = get_object(name)
            if obj is None:
                raise ValueError(f"no such sObject {name!r}")
            resolved.append(obj)
            configured[obj.name] = tuple(f.name for f in mapping_fields(obj, fields))
        if interval <= 0:
            raise ValueError("the polling interval must be positive")
        self.org_url = org_url
        self.store_url = store_url
        self.objects: tuple[SObject, ...] = tuple(resolved)
        self.configured: dict[str, tuple[str, ...]] = configured
        self.interval = interval
        self.schema = schema
        self.org_id = org_id
        self._s = _q(schema)
        self._lock = threading.RLock()  # one poll, reload or mapping edit at a time in this process
        self._wake = threading.Event()  # resume/reload/edit ask the loop to look at the schedule now
        self._ready = False
        self._loading: set[str] = set()  # objects in a full load right now
        self._altering: set[str] = set()  # objects whose table is being altered right now
        self._last_error: str | None = None
        self._forced: str | None = None
        self._forced_mappings: dict[str, str] = {}

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _store(self) -> Iterator[psycopg.Connection]:
        """A store session that counts as a Connect op: its writes are not trigger-logged."""
        with psycopg.connect(self.store_url, options="-c xmlbinary=hex -c TimeZone=UTC") as conn:
            yield conn

    @contextmanager
    def _org(self) -> Iterator[psycopg.Connection]:
        """A read-only org session on one snapshot, so changes and deletions agree."""
        with psycopg.connect(self.org_url, options="-c TimeZone=UTC") as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            yield conn

    def mapped(self, object_name: str) -> SObject:
        """The mapped sObject by API name (case-insensitive); KeyError if it is not mapped."""
        for obj in self.objects:
            if obj.name.lower() == object_name.lower():
                return obj
        raise KeyError(object_name)

    def _table(self, obj: SObject) -> sql.Composable:
        return sql.Identifier(self.schema, obj.table)

    def _meta(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def _mapping_lock(self, conn, obj: SObject) -> None:
        """Serialise polls and edits of one mapping across processes (held until the transaction ends)."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"connect-mapping:{self.schema}.{obj.table}",))

    # -- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the Connect schema, system tables, mapped tables and triggers (idempotent).

        A mapping whose configured fields changed since the last setup has its table altered, as editing
        a mapping does; new columns are loaded by the next poll (state RESYNC).
        """
        with self._store() as conn:
            # Serialise concurrent setups: CREATE ... IF NOT EXISTS races on the catalog.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"connect-setup:{self.schema}",))
            for stmt in _schema_ddl(self._s, f"{self.schema}.hc_trigger_log"):
                conn.execute(stmt)
            for obj in self.objects:
                fields = self._configure(conn, obj)
                for stmt in _mirror_ddl(self._s, obj, fields):
                    conn.execute(stmt)
                if self._alter_table(conn, obj, fields)[0]:
                    self._set_state(conn, obj, "RESYNC", unless=("INITIAL", "RELOAD_TABLE"))
            conn.execute(
                sql.SQL("INSERT INTO {m} (hcver, org_id, details) SELECT %s, %s, %s "
                        "WHERE NOT EXISTS (SELECT 1 FROM {m})").format(m=self._meta("_hcmeta")),
                (HCVER, self.org_id, json.dumps({"paused": False})),
            )
        self._ready = True

    def _ensure_setup(self) -> None:
        if not self._ready:
            self.setup()

    def _configure(self, conn, obj: SObject) -> list[Field]:
        """The mapping's fields: the settings' on first setup or when they changed since, else as last edited."""
        desired = list(self.configured[obj.name])
        mappings = self._meta("_sandbox_mappings")
        row = conn.execute(
            sql.SQL("SELECT fields, configured_fields, polling_seconds, configured_polling FROM {} "
                    "WHERE object_name = %s FOR UPDATE").format(mappings), (obj.name,)
        ).fetchone()
        if row is None:
            conn.execute(
                sql.SQL("INSERT INTO {} (object_name, table_name, fields, configured_fields, polling_seconds, "
                        "configured_polling, applied_at) VALUES (%s, %s, %s, %s, %s, %s, now())").format(mappings),
                (obj.name, obj.table, desired, desired, self.interval, self.interval),
            )
            return mapping_fields(obj, desired)
        fields, configured_fields, polling, configured_polling = row
        if configured_fields != desired or configured_polling != self.interval:
            if configured_fields != desired:
                fields = desired
            if configured_polling != self.interval:
                polling = self.interval
            conn.execute(
                sql.SQL("UPDATE {} SET fields = %s, configured_fields = %s, polling_seconds = %s, "
                        "configured_polling = %s, revision = revision + 1, applied_at = now() "
                        "WHERE object_name = %s").format(mappings),
                (fields, desired, polling, self.interval, obj.name),
            )
        return mapping_fields(obj, fields)

    def _alter_table(self, conn, obj: SObject, fields: list[Field]) -> tuple[list[str], list[str]]:
        """Make the table's columns the mapping's fields, with ALTER TABLE as Connect does; (added, dropped)."""
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (self.schema, obj.table)).fetchall()}
        want = {f.column: f for f in mirrored_fields(fields)}
        added = [c for c in want if c not in have]
        # A field removed from the mapping loses its column. The docs say only that editing a mapping
        # "modifies the existing database table using the ALTER TABLE SQL command"; dropping is the
        # stricter reading: nothing may keep reading a column Connect no longer updates.
        dropped = sorted(c for c in have if c not in want and c not in SYSTEM_COLUMNS)
        table = self._table(obj)
        for c in added:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table, sql.Identifier(c), sql.SQL(mirror_type(want[c]))))
        for c in dropped:
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(c)))
        if added or dropped:
            log.info('event="SCHEMA CHANGED %s" object_type=mapping added=%s dropped=%s', obj.table,
                     ",".join(added) or "-", ",".join(dropped) or "-")
        return added, dropped

    def _set_state(self, conn, obj: SObject, state: str, *, unless: tuple[str, ...] = ()) -> None:
        conn.execute(
            sql.SQL("UPDATE {} SET state = %s WHERE object_name = %s AND NOT state = ANY(%s)")
            .format(self._meta("_sandbox_mappings")),
            (state, obj.name, list(unless)),
        )

    # -- mapping configuration ---------------------------------------------------------------

    def mapping_config(self, object_name: str) -> dict:
        """The mapping as configured: ``fields`` (API names), ``polling_seconds``, ``revision``, ``applied_at``."""
        obj = self.mapped(object_name)
        self._ensure_setup()
        with self._store() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                sql.SQL("SELECT fields, polling_seconds, revision, applied_at FROM {} WHERE object_name = %s")
                .format(self._meta("_sandbox_mappings")), (obj.name,)).fetchone()
        return {**row, "fields": [f.name for f in mapping_fields(obj, row["fields"])]}

    def edit_mapping(self, object_name: str, *, fields: Iterable[str] | None = None,
                     polling_seconds: float | None = None) -> dict:
        """Edit a mapping as Connect's dashboard or API does, and return its new configuration.

        New fields are added to the table with ALTER TABLE and the mapping goes to RESYNC until the next
        poll has loaded their values; removed fields lose their columns. A new polling interval applies
        from the last poll (a shorter one may make the mapping due at once). Raises MappingError for a
        field the object does not have.
        """
        obj = self.mapped(object_name)
        if polling_seconds is not None and not polling_seconds > 0:
            raise MappingError("sf_polling_seconds must be a positive number of seconds")
        new_fields = mapping_fields(obj, fields) if fields is not None else None
        self._ensure_setup()
        with self._lock, self._store() as conn:
            self._mapping_lock(conn, obj)
            mappings = self._meta("_sandbox_mappings")
            current, polling = conn.execute(
                sql.SQL("SELECT fields, polling_seconds FROM {} WHERE object_name = %s FOR UPDATE").format(mappings),
                (obj.name,)).fetchone()
            if new_fields is not None:
                self._altering.add(obj.name)
                try:
                    added, _ = self._alter_table(conn, obj, new_fields)
                finally:
                    self._altering.discard(obj.name)
                if added:
                    self._set_state(conn, obj, "RESYNC", unless=("INITIAL", "RELOAD_TABLE"))
                current = [f.name for f in new_fields]
            conn.execute(
                sql.SQL("UPDATE {} SET fields = %s, polling_seconds = %s, revision = revision + 1, "
                        "applied_at = now() WHERE object_name = %s").format(mappings),
                (current, polling_seconds if polling_seconds is not None else polling, obj.name),
            )
        self._wake.set()
        return self.mapping_config(obj.name)

    # -- polling -----------------------------------------------------------------------------

    def poll_once(self, object_names: Iterable[str] | None = None) -> dict[str, dict]:
        """Poll every mapping (or those named) now, whatever their schedule; nothing happens while paused.

        Returns ``{object: {"upserted": n, "deleted": n, "full": bool}}``. A failing mapping does not
        stop the others; its error is recorded and ``SyncError`` is raised at the end.
        """
        objs = [self.mapped(n) for n in object_names] if object_names is not None else list(self.objects)
        with self._lock:
            try:
                self._ensure_setup()
                if self.is_paused():
                    return {}
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise
            results, failures = {}, []
            for obj in objs:
                try:
                    results[obj.name] = self._sync_mapping(obj)
                except Exception as exc:
                    log.exception('event="POLL FAILED" object_type=mapping object=%s', obj.name)
                    failures.append(f"{obj.name}: {type(exc).__name__}: {exc}")
                    self._record_error(obj, exc)
            self._last_error = "; ".join(failures) or None
            if failures:
                raise SyncError("; ".join(failures))
            return results

    def due(self) -> tuple[list[str], float]:
        """The mappings whose poll is due now (their interval has passed since their last poll, or they
        are loading), and the seconds until the next of the others is due."""
        self._ensure_setup()
        with self._store() as conn:
            rows = conn.execute(
                sql.SQL("SELECT object_name, state, extract(epoch FROM last_poll_at + polling_seconds "
                        "* interval '1 second' - now()) FROM {}").format(self._meta("_sandbox_mappings"))
            ).fetchall()
        mapped = {o.name for o in self.objects}
        due, waits = [], []
        for name, state, remaining in rows:
            if name not in mapped:
                continue
            if state in LOADING_STATES or remaining is None or remaining <= 0:
                due.append(name)
            else:
                waits.append(float(remaining))
        return due, min(waits, default=MAX_IDLE)

    def _record_error(self, obj: SObject, exc: Exception) -> None:
        try:
            with self._store() as conn:
                conn.execute(
                    sql.SQL("UPDATE {} SET last_error = %s, last_error_at = now(), last_poll_at = now(), "
                            "polls = polls + 1 WHERE object_name = %s").format(self._meta("_sandbox_mappings")),
                    (f"{type(exc).__name__}: {exc}", obj.name),
                )
        except psycopg.Error:
            log.warning("could not record the error of mapping %s", obj.name)

    def _sync_mapping(self, obj: SObject) -> dict:
        """One mapping's poll in one store transaction: changed rows upserted, deleted rows removed, and
        the state and counts the API reports until the next poll."""
        mappings = self._meta("_sandbox_mappings")
        table = self._table(obj)
        with self._store() as store, self._org() as org:
            self._mapping_lock(store, obj)
            m = store.cursor(row_factory=dict_row).execute(
                sql.SQL("SELECT state, fields, modstamp_watermark, deletion_watermark, read_at, sf_count "
                        "FROM {} WHERE object_name = %s FOR UPDATE").format(mappings),
                (obj.name,),
            ).fetchone()
            fields = mapping_fields(obj, m["fields"])
            watermark, del_watermark, read_at = m["modstamp_watermark"], m["deletion_watermark"], m["read_at"]
            full = m["state"] in ("INITIAL", "RELOAD_TABLE") or watermark is None
            # New columns (RESYNC): every row is read again and rewritten, without emptying the table.
            resync = m["state"] == "RESYNC" and not full
            # The read horizon: every record stamped before it is in this snapshot, except rows of
            # transactions still open now, so the horizon also stops at the oldest of those.
            horizon, polled_at = org.execute(
                "SELECT least(now(), (SELECT min(xact_start) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND datname = current_database() AND xact_start IS NOT NULL)), now()"
            ).fetchone()
            try:
                if full:
                    self._loading.add(obj.name)
                    log.info('event="RELOAD TABLE %s" object_type=mapping state=RELOAD_TABLE', obj.table)
                    store.execute(sql.SQL("TRUNCATE {}").format(table))
                    since = None
                elif resync:
                    log.info('event="RESYNC %s" object_type=mapping state=RESYNC', obj.table)
                    since = None
                else:
                    since = min(watermark, read_at - OVERLAP) if read_at else watermark - OVERLAP
                upserted, deleted, new_watermark = self._apply_changes(org, store, obj, fields, since,
                                                                       rewrite=resync)
                if full:
                    # An empty object still counts as loaded: later rows are newer than this snapshot.
                    watermark = new_watermark or horizon
                    # A fresh load already lacks every deleted record; start the delete poll from here.
                    del_watermark = org.execute(
                        "SELECT max(deleted_at) FROM org.deletions WHERE object = %s", (obj.name,)
                    ).fetchone()[0] or horizon
                else:
                    watermark = max(watermark, new_watermark or watermark)
                    removed, newest = self._apply_deletions(
                        org, store, obj, min(del_watermark, read_at - OVERLAP) if del_watermark and read_at
                        else del_watermark
                    )
                    deleted += removed
                    del_watermark = max(filter(None, (del_watermark, newest)), default=None)
                changed = bool(upserted or deleted or full or resync)
                # Counts as of this poll (the org's on this poll's snapshot); unchanged rows keep them.
                sf_count = db_count = None
                if changed or m["sf_count"] is None:
                    sf_count = org.execute(sql.SQL("SELECT count(*) FROM {} WHERE NOT isdeleted").format(
                        sql.Identifier("org", obj.table))).fetchone()[0]
                    db_count = store.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
                pending, errors = self._write_counts(store, obj)
                store.execute(
                    sql.SQL(
                        """UPDATE {} SET state = 'DATA_SYNCED', modstamp_watermark = coalesce(%s, modstamp_watermark),
                               deletion_watermark = coalesce(%s, deletion_watermark), read_at = %s,
                               loaded_at = CASE WHEN %s THEN now() ELSE loaded_at END,
                               last_poll_at = now(), last_synced_at = now(), polled_at = %s,
                               last_changed_at = CASE WHEN %s THEN now() ELSE last_changed_at END,
                               polls = polls + 1, rows_upserted = rows_upserted + %s,
                               rows_deleted = rows_deleted + %s, last_upserted = %s, last_deleted = %s,
                               db_count = coalesce(%s, db_count), sf_count = coalesce(%s, sf_count),
                               counted_at = CASE WHEN %s::bigint IS NOT NULL THEN now() ELSE counted_at END,
                               pending = %s, errors = %s, last_error = NULL, last_error_at = NULL
                           WHERE object_name = %s"""
                    ).format(mappings),
                    (watermark, del_watermark, horizon, full, polled_at, changed, upserted, deleted, upserted,
                     deleted, db_count, sf_count, sf_count, pending, errors, obj.name),
                )
                store.commit()
            finally:
                self._loading.discard(obj.name)
        if full:
            log.info('event="RELOAD COMPLETE" object_type=mapping object=%s rows=%s', obj.table, upserted)
        return {"upserted": upserted, "deleted": deleted, "full": full}

    def _write_counts(self, store, obj: SObject) -> tuple[int, int]:
        """Trigger-log writes to the table still waiting, and those that failed in the last 24 h.

        What Connect counts as ``counts.pending`` is not documented (the plugin only types it); the sandbox
        counts writes still waiting, so that a mapping never looks settled over unsent writes."""
        return store.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {log} WHERE state IN ('NEW', 'PENDING') AND table_name = %s), "
                "(SELECT count(*) FROM {log} WHERE state = 'FAILED' AND table_name = %s "
                "AND created_at > now() - interval '24 hours') + "
                "(SELECT count(*) FROM {archive} WHERE state = 'FAILED' AND table_name = %s "
                "AND created_at > now() - interval '24 hours')"
            ).format(log=self._meta("_trigger_log"), archive=self._meta("_trigger_log_archive")),
            (obj.table, obj.table, obj.table),
        ).fetchone()

    def _apply_changes(self, org, store, obj: SObject, fields: list[Field], since: dt.datetime | None, *,
                       rewrite: bool = False):
        """Stream org rows changed after ``since`` into a temp table, then upsert/delete in one statement each.

        ``rewrite`` updates every row read, not only those whose SystemModstamp moved (new columns).
        """
        columns = mirrored_fields(fields)
        mirror_cols = [sql.Identifier(f.column) for f in columns]
        selected = [sql.SQL("id")]
        for f in columns:
            col = sql.Identifier(f.column)
            if f.type == "datetime":
                selected.append(sql.SQL("{} AT TIME ZONE 'UTC'").format(col))  # Connect stores UTC, no zone
            elif f.type in ("currency", "percent"):
                selected.append(sql.SQL("{}::double precision").format(col))
            else:
                selected.append(col)
        where = sql.SQL("WHERE systemmodstamp > {}").format(sql.Literal(since)) if since else sql.SQL("")
        store.execute(
            sql.SQL("CREATE TEMP TABLE _incoming ON COMMIT DROP AS SELECT sfid, {} FROM {} WITH NO DATA")
            .format(sql.SQL(", ").join(mirror_cols), self._table(obj))
        )
        src_query = sql.SQL("COPY (SELECT {} FROM {} {}) TO STDOUT").format(
            sql.SQL(", ").join(selected), sql.Identifier("org", obj.table), where
        )
        dst_query = sql.SQL("COPY _incoming (sfid, {}) FROM STDIN").format(sql.SQL(", ").join(mirror_cols))
        with org.cursor().copy(src_query) as src, store.cursor().copy(dst_query) as dst:
            for block in src:
                dst.write(block)
        newest = store.execute("SELECT max(systemmodstamp) AT TIME ZONE 'UTC' FROM _incoming").fetchone()[0]
        updates = sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=c) for c in mirror_cols)
        only_changed = sql.SQL("") if rewrite else sql.SQL(
            "WHERE {t}.systemmodstamp IS DISTINCT FROM excluded.systemmodstamp").format(t=self._table(obj))
        upserted = store.execute(
            sql.SQL(
                """INSERT INTO {t} (sfid, {cols}) SELECT sfid, {cols} FROM _incoming WHERE NOT isdeleted
                   ON CONFLICT (sfid) DO UPDATE SET {updates} {only_changed}"""
            ).format(t=self._table(obj), cols=sql.SQL(", ").join(mirror_cols), updates=updates,
                     only_changed=only_changed)
        ).rowcount
        # Connect removes records deleted in Salesforce; it does not keep isdeleted = true rows.
        deleted = store.execute(
            sql.SQL("DELETE FROM {t} m USING _incoming i WHERE m.sfid = i.sfid AND i.isdeleted")
            .format(t=self._table(obj))
        ).rowcount
        return upserted, deleted, newest

    def _apply_deletions(self, org, store, obj: SObject, since: dt.datetime | None) -> tuple[int, dt.datetime | None]:
        """The delete poll: remove records the org deleted (soft or hard) after ``since``."""
        where = sql.SQL("AND deleted_at > {}").format(sql.Literal(since)) if since else sql.SQL("")
        store.execute("CREATE TEMP TABLE _gone (sfid varchar(18), deleted_at timestamptz) ON COMMIT DROP")
        src_query = sql.SQL("COPY (SELECT id, deleted_at FROM org.deletions WHERE object = {} {}) TO STDOUT").format(
            sql.Literal(obj.name), where
        )
        with org.cursor().copy(src_query) as src, store.cursor().copy("COPY _gone FROM STDIN") as dst:
            for block in src:
                dst.write(block)
        newest = store.execute("SELECT max(deleted_at) FROM _gone").fetchone()[0]
        removed = store.execute(
            sql.SQL("DELETE FROM {} m USING _gone g WHERE m.sfid = g.sfid").format(self._table(obj))
        ).rowcount
        return removed, newest

    def run(self, stop_event: threading.Event) -> None:
        """Poll each mapping on its own interval until ``stop_event`` is set; a failed poll is logged, not fatal."""
        log.info("Connect sync started for %s (polling every %ss unless a mapping says otherwise)",
                 ", ".join(o.name for o in self.objects), self.interval)
        while not stop_event.is_set():
            wait = MAX_IDLE
            try:
                if not self.is_paused():
                    due, wait = self.due()
                    if due:
                        self.poll_once(due)
                        _, wait = self.due()
            except Exception:
                log.exception("Connect poll failed; retrying in %ss", MAX_IDLE)
                wait = MAX_IDLE
            # Resume, reload and mapping edits wake the loop; otherwise it sleeps until the next poll is due.
            if self._wake.wait(max(0.0, min(wait, MAX_IDLE))):
                self._wake.clear()
        log.info("Connect sync stopped")

    # -- connection actions ------------------------------------------------------------------

    def _details(self, conn, *, for_update: bool = False) -> dict:
        query = sql.SQL("SELECT details FROM {} ORDER BY id LIMIT 1{}").format(
            self._meta("_hcmeta"), sql.SQL(" FOR UPDATE") if for_update else sql.SQL(""))
        row = conn.execute(query).fetchone()
        try:
            return json.loads(row[0]) if row and row[0] else {}
        except ValueError:
            return {}

    def _update_details(self, change) -> dict:
        """Read-modify-write ``_hcmeta.details`` under a row lock; ``change`` edits the dict in place."""
        self._ensure_setup()
        with self._store() as conn:
            details = self._details(conn, for_update=True)
            change(details)
            conn.execute(sql.SQL("UPDATE {} SET details = %s").format(self._meta("_hcmeta")), (json.dumps(details),))
        return details

    def _set_paused(self, paused: bool) -> None:
        self._update_details(lambda d: d.__setitem__("paused", paused))
        log.info('event="%s" object_type=sync', "PAUSED" if paused else "RESUMED")

    def pause(self) -> None:
        """Stop polling until ``resume``; kept in ``_hcmeta`` so a restarted loop stays paused, as Connect does."""
        self._set_paused(True)

    def resume(self) -> None:
        """Continue polling where the watermarks stopped."""
        self._set_paused(False)
        self._wake.set()

    def is_paused(self) -> bool:
        self._ensure_setup()
        with self._store() as conn:
            return bool(self._details(conn).get("paused"))

    def grant_access(self, app_id: str, user_id: str) -> None:
        """Put a Heroku user on the add-on's access list (``POST /auth/<app>``); kept in ``_hcmeta``."""
        def add(details: dict) -> None:
            users = details.setdefault("access", {}).setdefault(app_id, [])
            if user_id not in users:
                users.append(user_id)

        self._update_details(add)

    def has_access(self, app_id: str, user_id: str) -> bool:
        self._ensure_setup()
        with self._store() as conn:
            return user_id in self._details(conn).get("access", {}).get(app_id, [])

    def reload(self, object_name: str, *, wait: bool = False) -> None:
        """Truncate and reload one mapping on the next poll (or now, with ``wait``); state RELOAD_TABLE meanwhile."""
        obj = self.mapped(object_name)
        self._ensure_setup()
        with self._store() as conn:
            self._set_state(conn, obj, "RELOAD_TABLE")
        self._wake.set()
        if wait:
            with self._lock:
                self._sync_mapping(obj)

    def force_state(self, state: str | None, object_name: str | None = None) -> None:
        """Test hook: report ``state`` for the connection (or one mapping) until called with None."""
        if object_name is None:
            self._forced = state
        elif state is None:
            self._forced_mappings.pop(self.mapped(object_name).name, None)
        else:
            self._forced_mappings[self.mapped(object_name).name] = state

    # -- states ------------------------------------------------------------------------------

    def connection_state(self) -> str:
        """IDLE, PAUSED, SYSTEM_ERROR (the last poll failed) or DB_UNAVAILABLE, or a forced state."""
        if self._forced:
            return self._forced
        try:
            with self._store() as conn:
                details = self._details(conn)
                failed = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE last_error_at IS NOT NULL "
                            "AND (last_synced_at IS NULL OR last_error_at > last_synced_at)")
                    .format(self._meta("_sandbox_mappings"))
                ).fetchone()[0]
        except psycopg.OperationalError:
            return "DB_UNAVAILABLE"
        except psycopg.errors.UndefinedTable:
            return "NEW"
        if details.get("paused"):
            return "PAUSED"
        if failed or self._last_error:
            return "SYSTEM_ERROR"
        return "IDLE"

    def last_error(self) -> str | None:
        return self._last_error

    def mapping_state(self, object_name: str) -> dict:
        """One mapping's state, counts and configuration (see ``mapping_states``)."""
        obj = self.mapped(object_name)
        return self.mapping_states((obj.name,))[obj.name]

    def mapping_states(self, object_names: tuple[str, ...] | None = None) -> dict[str, dict]:
        """State and counts per mapping as of its last poll, as Connect reports them: DATA_SYNCED means
        "All rows have been synced since the last poll" (https://devcenter.heroku.com/articles/mapping-states-reference)
        and says nothing about org changes since; the counts are the last poll's (``db_count_date``,
        ``salesforce_count_date``). Nothing here reads the org.

        The sandbox does not report the POLLING_SF_* states a real mapping passes through during a
        routine poll (its polls take milliseconds); it reports RELOAD_TABLE, RESYNC and SCHEMA_CHANGED.
        """
        self._ensure_setup()
        objs = [self.mapped(n) for n in object_names] if object_names else list(self.objects)
        out: dict[str, dict] = {}
        with self._store() as store:
            rows = {r["object_name"]: r for r in store.cursor(row_factory=dict_row).execute(
                sql.SQL("SELECT * FROM {} WHERE object_name = ANY(%s)").format(self._meta("_sandbox_mappings")),
                ([o.name for o in objs],),
            ).fetchall()}
        for obj in objs:
            m = rows[obj.name]
            state = self._mapping_state_name(obj, m["state"])
            counted = m["sf_count"] is not None
            out[obj.name] = {
                "object_name": obj.name,
                "table_name": obj.table,
                "state": state,
                "state_description": _describe(state, m["last_error"]),
                "counts": {"db": m["db_count"], "sf": m["sf_count"], "pending": m["pending"] or 0,
                           "errors": m["errors"] or 0} if counted else None,
                "db_count_date": m["counted_at"],
                "salesforce_count_date": m["counted_at"],
                "fields": [f.name for f in mapping_fields(obj, m["fields"])],
                "polling_seconds": m["polling_seconds"],
                "revision": m["revision"],
                "applied_at": m["applied_at"],
                "polled_at": m["polled_at"],
                "created_at": m["created_at"],
                "loaded_at": m["loaded_at"],
                "last_poll_at": m["last_poll_at"],
                "last_synced_at": m["last_synced_at"],
                "last_changed_at": m["last_changed_at"],
                "last_error": m["last_error"],
                "polls": m["polls"],
                "rows_upserted": m["rows_upserted"],
                "rows_deleted": m["rows_deleted"],
                "last_upserted": m["last_upserted"],
                "last_deleted": m["last_deleted"],
            }
        return out

    def write_errors(self, object_name: str | None = None, *, within: dt.timedelta = dt.timedelta(hours=24)
                     ) -> list[dict]:
        """FAILED trigger-log rows (live and archived) of the last 24 h, newest first, as Connect lists them."""
        self._ensure_setup()
        table = self.mapped(object_name).table if object_name else None
        where = sql.SQL("state = 'FAILED' AND created_at > now() - %s::interval "
                        "AND (%s::text IS NULL OR table_name = %s)")
        query = sql.SQL(
            "SELECT id, table_name, record_id, action, sfid, sf_message, created_at FROM ("
            "SELECT * FROM {log} WHERE {where} UNION ALL SELECT * FROM {archive} WHERE {where}"
            ") e ORDER BY created_at DESC, id DESC"
        ).format(log=self._meta("_trigger_log"), archive=self._meta("_trigger_log_archive"), where=where)
        params = (within, table, table) * 2
        with self._store() as conn:
            return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()

    def _mapping_state_name(self, obj: SObject, stored: str) -> str:
        if obj.name in self._forced_mappings:
            return self._forced_mappings[obj.name]
        if obj.name in self._altering:
            return "SCHEMA_CHANGED"
        if stored == "RELOAD_TABLE" or obj.name in self._loading:
            return "RELOAD_TABLE"
        return stored


# Each state's label in the Connect dashboard (https://devcenter.heroku.com/articles/mapping-states-reference).
_STATE_LABELS = {
    "DATA_SYNCED": "OK",
    "INITIAL": "Creating",
    "RESYNC": "Loading new columns",
    "RELOAD_TABLE": "Reloading",
    "SCHEMA_CHANGED": "Altering DB schema",
    "POLLING_SF_CHANGES": "Polling SF",
    "POLLING_SF_BULK": "Polling SF (bulk)",
    "POLLING_SF_FOR_DELETES": "Polling SF (deletes)",
}


def _describe(state: str, error: str | None) -> str:
    text = _STATE_LABELS.get(state, state.replace("_", " ").capitalize())
    return f"{text}; last poll failed: {error}" if error else text
