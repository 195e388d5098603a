"""Apply ``airflow_settings.yaml`` (the Astro CLI format) to Airflow's metadata database.

The Astro CLI reads this file for ``astro dev start``; without Astro, this module does the same job::

    python -m retention.settings_loader [airflow_settings.yaml] [--check]

It creates or updates the pools, connections and variables the file declares, in one transaction, and
is idempotent: applying the same file twice changes nothing, applying an edited file updates the
entries in place. Entries the file does not mention are left alone.

The format is Astro's (``airflow: {connections, pools, variables}`` with ``conn_*``, ``pool_*`` and
``variable_*`` keys), with one extension so that no secret has to be committed: string values may
reference environment variables, expanded when the file is loaded:

``${NAME}``
    the value of ``NAME``; an error naming it when it is not set
``${NAME:-default}``
    ``default`` when ``NAME`` is unset or empty (``${NAME-default}``: only when unset); the default
    may itself contain placeholders, e.g. ``${SALESFORCE_DOMAIN:-localhost:${SANDBOX_SF_PORT}}``
``$$``
    a literal ``$``

Placeholders are expanded after YAML parsing, so a value containing quotes, colons or ``#`` cannot
break the file. An empty optional value (``conn_schema: ${SCHEMA:-}``) means "not set".
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

CONNECTION_KEYS = frozenset(
    {"conn_id", "conn_type", "conn_host", "conn_schema", "conn_login", "conn_password", "conn_port", "conn_uri",
     "conn_extra"}
)
POOL_KEYS = frozenset({"pool_name", "pool_slot", "pool_description"})
VARIABLE_KEYS = frozenset({"variable_name", "variable_value"})
SECTIONS = {"connections": CONNECTION_KEYS, "pools": POOL_KEYS, "variables": VARIABLE_KEYS}
# Airflow's own rule for connection ids and variable keys (airflow.utils.helpers.validate_key).
KEY_RE = re.compile(r"^[\w.-]+$")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SettingsError(ValueError):
    """The settings file is missing, malformed, or references an unset environment variable."""


@dataclass(frozen=True)
class PoolSpec:
    name: str
    slots: int
    description: str = ""


@dataclass(frozen=True)
class ConnectionSpec:
    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None
    extra: dict[str, Any] | None = field(default=None, repr=False)  # may hold tokens
    uri: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VariableSpec:
    key: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    connections: tuple[ConnectionSpec, ...] = ()
    pools: tuple[PoolSpec, ...] = ()
    variables: tuple[VariableSpec, ...] = ()
    source: str = "<memory>"


@dataclass(frozen=True)
class Change:
    """What applying one entry did: kind is pool/connection/variable, action created/updated/unchanged."""

    kind: str
    name: str
    action: str
    note: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.action}" + (f" ({self.note})" if self.note else "")


# --- environment placeholders ---------------------------------------------------------------------------


def expand_env(text: str, env: Mapping[str, str] | None = None, where: str = "value") -> str:
    """Expand ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` and ``$$`` in ``text``."""
    env = os.environ if env is None else env
    value, end = _expand(text, 0, env, where, evaluate=True, in_default=False)
    assert end == len(text)
    return value


def _expand(text: str, i: int, env: Mapping[str, str], where: str, *, evaluate: bool, in_default: bool):
    out: list[str] = []
    while i < len(text):
        char = text[i]
        if char == "}" and in_default:
            return "".join(out), i
        if char == "$" and text.startswith("$$", i):
            out.append("$")
            i += 2
        elif char == "$" and text.startswith("${", i):
            value, i = _reference(text, i + 2, env, where, evaluate=evaluate)
            out.append(value)
        else:
            out.append(char)
            i += 1
    if in_default:
        raise SettingsError(f"{where}: unterminated placeholder in {text!r}: missing '}}'")
    return "".join(out), i


def _reference(text: str, i: int, env: Mapping[str, str], where: str, *, evaluate: bool) -> tuple[str, int]:
    """Expand one placeholder whose name starts at ``i`` (just after ``${``); return it and the index after."""
    match = NAME_RE.match(text, i)
    if not match:
        raise SettingsError(f"{where}: bad placeholder in {text!r}: expected ${{NAME}} or ${{NAME:-default}}")
    name, i = match.group(), match.end()
    if text.startswith("}", i):
        if evaluate and name not in env:
            raise SettingsError(
                f"{where}: environment variable {name} is not set "
                f"(set it, or give a default with ${{{name}:-default}})"
            )
        return (env.get(name, "") if evaluate else ""), i + 1
    for operator in (":-", "-"):
        if text.startswith(operator, i):
            current = env.get(name)
            use_default = current is None or (operator == ":-" and current == "")
            default, i = _expand(text, i + len(operator), env, where, evaluate=evaluate and use_default,
                                 in_default=True)
            return (default if use_default else current or "") if evaluate else "", i + 1
    raise SettingsError(f"{where}: bad placeholder in {text!r}: expected '}}', ':-' or '-' after {name}")


def _expand_tree(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return expand_env(value, env, where)
    if isinstance(value, dict):
        return {k: _expand_tree(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(v, env, f"{where}[{n}]") for n, v in enumerate(value)]
    return value


# --- loading and validation -----------------------------------------------------------------------------


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate a settings file; raise :class:`SettingsError` naming the file and key."""
    import yaml

    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:  # a named stream: YAML errors then cite the file
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    return parse_settings(data, env=env, source=str(path))


def parse_settings(data: Any, env: Mapping[str, str] | None = None, source: str = "<memory>") -> Settings:
    """Validate already-parsed YAML (see :func:`load_settings`)."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: expected a mapping with the key 'airflow', got {_kind(data)}")
    unknown = set(data) - {"airflow"}
    if unknown:
        raise SettingsError(f"{source}: unknown top-level key(s) {_names(unknown)}; expected only 'airflow'")
    airflow = data.get("airflow") or {}
    if not isinstance(airflow, dict):
        raise SettingsError(f"{source}: airflow: expected a mapping, got {_kind(airflow)}")
    unknown = set(airflow) - set(SECTIONS)
    if unknown:
        raise SettingsError(f"{source}: airflow: unknown key(s) {_names(unknown)}; expected {_names(SECTIONS)}")

    entries: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for section, allowed in SECTIONS.items():
        items = airflow.get(section) or []
        if not isinstance(items, list):
            raise SettingsError(f"{source}: airflow.{section}: expected a list, got {_kind(items)}")
        entries[section] = []
        for n, item in enumerate(items):
            where = f"{source}: airflow.{section}[{n}]"
            if not isinstance(item, dict):
                raise SettingsError(f"{where}: expected a mapping, got {_kind(item)}")
            unknown = set(item) - allowed
            if unknown:
                raise SettingsError(f"{where}: unknown key(s) {_names(unknown)}; allowed: {_names(allowed)}")
            entries[section].append((where, item))

    settings = Settings(
        connections=tuple(_connection(where, item, env) for where, item in entries["connections"]),
        pools=tuple(_pool(where, item, env) for where, item in entries["pools"]),
        variables=tuple(_variable(where, item, env) for where, item in entries["variables"]),
        source=source,
    )
    for section, names in (
        ("connections", [c.conn_id for c in settings.connections]),
        ("pools", [p.name for p in settings.pools]),
        ("variables", [v.key for v in settings.variables]),
    ):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SettingsError(f"{source}: airflow.{section}: declared more than once: {', '.join(duplicates)}")
    return settings


def _text(where: str, item: dict, key: str, env: Mapping[str, str], *, required: bool = False) -> str | None:
    """A scalar value as an expanded string; None (or an error naming the key, if required) when empty."""
    value = item.get(key)
    if isinstance(value, dict | list):
        raise SettingsError(f"{where}.{key}: expected a single value, got {_kind(value)}")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if value is not None and not isinstance(value, str):
        value = str(value)
    if isinstance(value, str):
        value = expand_env(value, env, f"{where}.{key}")
    if not value:
        if required:
            raise SettingsError(f"{where}: {key} is required")
        return None
    return value


def _integer(where: str, item: dict, key: str, env: Mapping[str, str], *, required: bool) -> int | None:
    raw = item.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = _text(where, item, key, env, required=required)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{where}.{key}: expected an integer, got {text!r}") from None


def _key(where: str, key: str, value: str) -> str:
    if len(value) > 250 or not KEY_RE.match(value):
        raise SettingsError(f"{where}.{key}: {value!r} may only contain letters, digits, '_', '.' and '-'")
    return value


def _connection(where: str, item: dict, env: Mapping[str, str]) -> ConnectionSpec:
    conn_id = _key(where, "conn_id", _text(where, item, "conn_id", env, required=True))
    where = f"{where} ({conn_id})"
    uri = _text(where, item, "conn_uri", env)
    conn_type = _text(where, item, "conn_type", env, required=uri is None)
    fields = {
        "host": _text(where, item, "conn_host", env),
        "schema": _text(where, item, "conn_schema", env),
        "login": _text(where, item, "conn_login", env),
        "password": _text(where, item, "conn_password", env),
        "port": _integer(where, item, "conn_port", env, required=False),
        "extra": _extra(where, item.get("conn_extra"), env),
    }
    if uri is not None:
        given = sorted(f"conn_{name}" for name, value in fields.items() if value is not None)
        if given:
            raise SettingsError(f"{where}: conn_uri cannot be combined with {', '.join(given)}")
        scheme = urlsplit(uri).scheme
        if not scheme:
            raise SettingsError(f"{where}.conn_uri: expected a URI such as postgres://user:pw@host:5432/db")
        # Airflow's own normalisation of the URI scheme (Connection._normalize_conn_type).
        uri_type = "postgres" if scheme == "postgresql" else scheme.replace("-", "_")
        if conn_type is not None and conn_type != uri_type:
            raise SettingsError(f"{where}: conn_type {conn_type!r} disagrees with the conn_uri scheme {scheme!r}")
        conn_type = uri_type
    return ConnectionSpec(conn_id=conn_id, conn_type=conn_type, uri=uri, **fields)


def _extra(where: str, raw: Any, env: Mapping[str, str]) -> dict[str, Any] | None:
    where = f"{where}.conn_extra"
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        text = expand_env(raw, env, where)
        if not text.strip():
            return None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{where}: expected a mapping or a JSON object: {exc}") from None
        if not isinstance(raw, dict):
            raise SettingsError(f"{where}: expected a mapping or a JSON object, got {_kind(raw)}")
        return raw
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a mapping or a JSON object, got {_kind(raw)}")
    return {str(k): _expand_tree(v, env, f"{where}.{k}") for k, v in raw.items()}


def _pool(where: str, item: dict, env: Mapping[str, str]) -> PoolSpec:
    name = _text(where, item, "pool_name", env, required=True)
    slots = _integer(f"{where} ({name})", item, "pool_slot", env, required=True)
    if slots < -1:
        raise SettingsError(f"{where} ({name}).pool_slot: must be -1 (unlimited) or more, got {slots}")
    return PoolSpec(name=name, slots=slots, description=_text(where, item, "pool_description", env) or "")


def _variable(where: str, item: dict, env: Mapping[str, str]) -> VariableSpec:
    key = _key(where, "variable_name", _text(where, item, "variable_name", env, required=True))
    where = f"{where} ({key})"
    raw = item.get("variable_value")
    if raw is None:
        raise SettingsError(f"{where}: variable_value is required")
    if isinstance(raw, dict | list):  # a structured value is stored as JSON (read with deserialize_json=True)
        return VariableSpec(key=key, value=json.dumps(_expand_tree(raw, env, f"{where}.variable_value")))
    if isinstance(raw, bool):
        return VariableSpec(key=key, value=json.dumps(raw))
    return VariableSpec(key=key, value=expand_env(str(raw), env, f"{where}.variable_value"))


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _names(names) -> str:
    return ", ".join(repr(n) for n in sorted(names))


# --- applying -------------------------------------------------------------------------------------------


def apply_settings(settings: Settings, *, session: Session | None = None) -> list[Change]:
    """Create or update the pools, connections and variables in Airflow's metadata DB, in one transaction.

    Returns what happened to each entry. Values are never returned or logged, only names.
    """
    if session is not None:
        return _apply(settings, session)
    from airflow.utils.session import create_session

    with create_session() as new_session:
        return _apply(settings, new_session)


def _apply(settings: Settings, session: Session) -> list[Change]:
    changes = [_apply_pool(spec, session) for spec in settings.pools]
    changes += [_apply_connection(spec, session) for spec in settings.connections]
    changes += [_apply_variable(spec, session) for spec in settings.variables]
    session.flush()
    return changes


def _apply_pool(spec: PoolSpec, session: Session) -> Change:
    from airflow.models import Pool
    from sqlalchemy import select

    existing = session.scalar(select(Pool).where(Pool.pool == spec.name))
    if existing is not None and (existing.slots, existing.description or "") == (spec.slots, spec.description):
        return Change("pool", spec.name, "unchanged")
    # include_deferred is not part of the Astro format: keep what an operator may have set.
    include_deferred = bool(existing.include_deferred) if existing is not None else False
    Pool.create_or_update_pool(spec.name, spec.slots, spec.description, include_deferred, session=session)
    return Change("pool", spec.name, "created" if existing is None else "updated")


def _apply_connection(spec: ConnectionSpec, session: Session) -> Change:
    from airflow.models import Connection
    from sqlalchemy import select

    wanted = Connection(
        conn_id=spec.conn_id,
        uri=spec.uri,
        **({} if spec.uri else {
            "conn_type": spec.conn_type, "host": spec.host, "schema": spec.schema, "login": spec.login,
            "password": spec.password, "port": spec.port, "extra": spec.extra,
        }),
    )
    note = None
    if f"AIRFLOW_CONN_{spec.conn_id.upper()}" in os.environ:
        note = f"AIRFLOW_CONN_{spec.conn_id.upper()} is set and takes precedence over the database"

    existing = session.scalar(select(Connection).where(Connection.conn_id == spec.conn_id))
    if existing is None:
        session.add(wanted)
        return Change("connection", spec.conn_id, "created", note)
    if _connection_values(existing) == _connection_values(wanted):
        return Change("connection", spec.conn_id, "unchanged", note)
    existing.conn_type = wanted.conn_type
    existing.host = wanted.host
    existing.schema = wanted.schema
    existing.login = wanted.login
    existing.password = wanted.password  # the setters encrypt with the Fernet key, as the UI does
    existing.port = wanted.port
    existing.extra = wanted.extra
    return Change("connection", spec.conn_id, "updated", note)


def _connection_values(conn) -> tuple:
    return (conn.conn_type, conn.host, conn.schema, conn.login, conn.password, conn.port, conn.extra_dejson)


def _apply_variable(spec: VariableSpec, session: Session) -> Change:
    from airflow.models import Variable
    from sqlalchemy import select

    existing = session.scalar(select(Variable).where(Variable.key == spec.key))
    note = None
    if f"AIRFLOW_VAR_{spec.key.upper()}" in os.environ:
        note = f"AIRFLOW_VAR_{spec.key.upper()} is set and takes precedence over the database"
    if existing is not None and existing.val == spec.value:
        return Change("variable", spec.key, "unchanged", note)
    # Keep a description someone wrote in the UI: the Astro format has none.
    description = existing.description if existing is not None else None
    Variable.set(spec.key, spec.value, description=description, session=session)
    return Change("variable", spec.key, "created" if existing is None else "updated", note)


# --- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m retention.settings_loader",
        description="Create or update Airflow pools, connections and variables from airflow_settings.yaml "
                    "(Astro CLI format; ${ENV} placeholders are expanded).",
    )
    parser.add_argument("path", nargs="?", default="airflow_settings.yaml", help="default: %(default)s")
    parser.add_argument("--check", action="store_true",
                        help="only load, expand and validate the file; do not touch the database")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.path)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.path}: {len(settings.pools)} pool(s), {len(settings.connections)} connection(s), "
              f"{len(settings.variables)} variable(s): OK")
        return 0
    from sqlalchemy.exc import SQLAlchemyError

    try:
        changes = apply_settings(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: cannot write to Airflow's metadata database (did you run 'airflow db migrate'?): "
              f"{type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    for change in changes:
        print(change)
    return 0


if __name__ == "__main__":
    sys.exit(main())
