"""Apply ``airflow_settings.yaml`` (the Astro CLI format) through Airflow's own CLI, as ``astro dev`` would.

The Astro CLI reads this file for ``astro dev start``; without Astro, this module does the same job::

    python -m retention.settings_loader [airflow_settings.yaml] [--check]

It checks the file, then hands each section to the Airflow command made for it: ``airflow pools import``,
``airflow variables import --action-on-existing-key overwrite`` and ``airflow connections import
--overwrite``. Applying the same file twice changes nothing; entries the file does not mention are left
alone. This module never writes Airflow's metadata database itself.

The file is committed, so it carries no secret: a connection password (or a password in a ``conn_uri``) is
refused, and so is a ``${...}`` placeholder, which the Astro CLI would store literally. Secret connections
come from the environment (``AIRFLOW_CONN_<ID>``, JSON or URI; ``python -m sandbox env`` prints the
sandbox's) or from a secrets backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONNECTION_KEYS = frozenset(
    {"conn_id", "conn_type", "conn_host", "conn_schema", "conn_login", "conn_password", "conn_port", "conn_uri",
     "conn_extra"}
)
POOL_KEYS = frozenset({"pool_name", "pool_slot", "pool_description"})
VARIABLE_KEYS = frozenset({"variable_name", "variable_value"})
SECTIONS = {"connections": CONNECTION_KEYS, "pools": POOL_KEYS, "variables": VARIABLE_KEYS}
# Airflow's own rule for connection ids and variable keys (airflow.utils.helpers.validate_key).
KEY_RE = re.compile(r"^[\w.-]+$")
# Our earlier loader expanded these; the Astro CLI does not, and would store them as the value.
PLACEHOLDER_RE = re.compile(r"\$\{[^}]*\}?")
NO_SECRETS = ("secrets are not committed: give the connection as AIRFLOW_CONN_{env} (JSON or URI) or in a "
              "secrets backend, and leave it out of this file")


class SettingsError(ValueError):
    """The settings file is missing, malformed, or holds a secret or a placeholder."""


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
    port: int | None = None
    extra: dict[str, Any] | None = field(default=None, repr=False)
    uri: str | None = None


@dataclass(frozen=True)
class VariableSpec:
    key: str
    value: str


@dataclass(frozen=True)
class Settings:
    connections: tuple[ConnectionSpec, ...] = ()
    pools: tuple[PoolSpec, ...] = ()
    variables: tuple[VariableSpec, ...] = ()
    source: str = "<memory>"


# --- loading and validation -----------------------------------------------------------------------------


def load_settings(path: str | os.PathLike) -> Settings:
    """Read and validate a settings file; raise :class:`SettingsError` naming the file and key."""
    import yaml

    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:  # a named stream: YAML errors then cite the file
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read settings file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    return parse_settings(data, source=str(path))


def parse_settings(data: Any, source: str = "<memory>") -> Settings:
    """Validate already-parsed YAML (see :func:`load_settings`)."""
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
            _refuse_placeholders(where, item)
            entries[section].append((where, item))

    settings = Settings(
        connections=tuple(_connection(where, item) for where, item in entries["connections"]),
        pools=tuple(_pool(where, item) for where, item in entries["pools"]),
        variables=tuple(_variable(where, item) for where, item in entries["variables"]),
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


def _refuse_placeholders(where: str, value: Any) -> None:
    if isinstance(value, str):
        found = PLACEHOLDER_RE.search(value)
        if found:
            raise SettingsError(
                f"{where}: {found.group()!r} would be stored literally (the Astro CLI does not expand "
                "placeholders); secrets belong in AIRFLOW_CONN_<ID> or a secrets backend, other values in the file")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_placeholders(f"{where}.{key}", item)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _refuse_placeholders(f"{where}[{n}]", item)


def _text(where: str, item: dict, key: str, *, required: bool = False) -> str | None:
    """A scalar value as a string; None (or an error naming the key, if required) when empty."""
    value = item.get(key)
    if isinstance(value, dict | list):
        raise SettingsError(f"{where}.{key}: expected a single value, got {_kind(value)}")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if value is not None and not isinstance(value, str):
        value = str(value)
    if not value:
        if required:
            raise SettingsError(f"{where}: {key} is required")
        return None
    return value


def _integer(where: str, item: dict, key: str, *, required: bool) -> int | None:
    raw = item.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = _text(where, item, key, required=required)
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


def _connection(where: str, item: dict) -> ConnectionSpec:
    conn_id = _key(where, "conn_id", _text(where, item, "conn_id", required=True))
    where = f"{where} ({conn_id})"
    env = conn_id.upper()
    if item.get("conn_password") not in (None, ""):
        raise SettingsError(f"{where}.conn_password: {NO_SECRETS.format(env=env)}")
    uri = _text(where, item, "conn_uri")
    conn_type = _text(where, item, "conn_type", required=uri is None)
    fields = {
        "host": _text(where, item, "conn_host"),
        "schema": _text(where, item, "conn_schema"),
        "login": _text(where, item, "conn_login"),
        "port": _integer(where, item, "conn_port", required=False),
        "extra": _extra(where, item.get("conn_extra")),
    }
    if uri is not None:
        given = sorted(f"conn_{name}" for name, value in fields.items() if value is not None)
        if given:
            raise SettingsError(f"{where}: conn_uri cannot be combined with {', '.join(given)}")
        parts = urlsplit(uri)
        if not parts.scheme:
            raise SettingsError(f"{where}.conn_uri: expected a URI such as postgres://user@host:5432/db")
        if parts.password:
            raise SettingsError(f"{where}.conn_uri: holds a password; {NO_SECRETS.format(env=env)}")
        # Airflow's own normalisation of the URI scheme (Connection._normalize_conn_type).
        uri_type = "postgres" if parts.scheme == "postgresql" else parts.scheme.replace("-", "_")
        if conn_type is not None and conn_type != uri_type:
            raise SettingsError(f"{where}: conn_type {conn_type!r} disagrees with the conn_uri scheme "
                                f"{parts.scheme!r}")
        conn_type = uri_type
    return ConnectionSpec(conn_id=conn_id, conn_type=conn_type, uri=uri, **fields)


def _extra(where: str, raw: Any) -> dict[str, Any] | None:
    where = f"{where}.conn_extra"
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{where}: expected a mapping or a JSON object: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a mapping or a JSON object, got {_kind(raw)}")
    return {str(k): v for k, v in raw.items()}


def _pool(where: str, item: dict) -> PoolSpec:
    name = _text(where, item, "pool_name", required=True)
    slots = _integer(f"{where} ({name})", item, "pool_slot", required=True)
    if slots < -1:
        raise SettingsError(f"{where} ({name}).pool_slot: must be -1 (unlimited) or more, got {slots}")
    return PoolSpec(name=name, slots=slots, description=_text(where, item, "pool_description") or "")


def _variable(where: str, item: dict) -> VariableSpec:
    key = _key(where, "variable_name", _text(where, item, "variable_name", required=True))
    raw = item.get("variable_value")
    if raw is None:
        raise SettingsError(f"{where} ({key}): variable_value is required")
    if isinstance(raw, dict | list | bool):  # a structured value is stored as JSON (read with deserialize_json)
        return VariableSpec(key=key, value=json.dumps(raw))
    return VariableSpec(key=key, value=str(raw))


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _names(names) -> str:
    return ", ".join(repr(n) for n in sorted(names))


# --- applying, through the Airflow CLI ------------------------------------------------------------------


def import_files(settings: Settings, folder: Path) -> list[list[str]]:
    """Write each non-empty section in the format of its ``airflow ... import`` command into ``folder``, and
    return those commands (without the ``airflow`` executable), pools first: connections may name them."""
    commands = []
    if settings.pools:
        path = folder / "pools.json"
        path.write_text(json.dumps({p.name: {"slots": p.slots, "description": p.description}
                                    for p in settings.pools}, indent=2))
        commands.append(["pools", "import", str(path)])
    if settings.variables:
        path = folder / "variables.json"
        path.write_text(json.dumps({v.key: v.value for v in settings.variables}, indent=2))
        commands.append(["variables", "import", "--action-on-existing-key", "overwrite", str(path)])
    if settings.connections:
        path = folder / "connections.json"
        path.write_text(json.dumps({c.conn_id: _connection_json(c) for c in settings.connections}, indent=2))
        commands.append(["connections", "import", "--overwrite", str(path)])
    return commands


def _connection_json(spec: ConnectionSpec) -> str | dict[str, Any]:
    """One entry of ``airflow connections import``'s JSON: the URI, or the fields that are set."""
    if spec.uri:
        return spec.uri
    values = {"conn_type": spec.conn_type, "host": spec.host, "schema": spec.schema, "login": spec.login,
              "port": spec.port, "extra_dejson": spec.extra}
    return {key: value for key, value in values.items() if value is not None}


def apply_settings(settings: Settings, *, airflow: str | None = None,
                   env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``airflow pools/variables/connections import`` for the sections the file fills; stop at the first
    that fails. Returns the finished commands; a failure raises :class:`subprocess.CalledProcessError`."""
    airflow = airflow or str(Path(sys.executable).with_name("airflow"))
    done = []
    with tempfile.TemporaryDirectory(prefix="airflow-settings-") as folder:
        for command in import_files(settings, Path(folder)):
            result = subprocess.run([airflow, *command], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
            done.append(result)
    return done


# --- command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m retention.settings_loader",
        description="Apply airflow_settings.yaml (Astro CLI format) with `airflow pools import`, `airflow "
                    "variables import` and `airflow connections import`. Secrets are not in the file: "
                    "give them as AIRFLOW_CONN_<ID> or in a secrets backend.",
    )
    parser.add_argument("path", nargs="?", default="airflow_settings.yaml", help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="only check the file; do not run Airflow")
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
    try:
        done = apply_settings(settings)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[1:3])} failed (did you run 'airflow db migrate'?):\n"
              f"{(exc.stdout or '')[-2000:]}{(exc.stderr or '')[-2000:]}", file=sys.stderr)
        return 1
    for result in done:
        print(f"airflow {' '.join(result.args[1:3])}:", result.stdout.strip() or "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
