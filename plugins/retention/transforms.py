"""Retain transforms: which part of a field the retention store keeps.

A policy's ``retain.fields`` maps each field to a transform (``keep``, ``email_domain``, ``year``,
``month``, ``truncate:N``, ``last:N``, ``hash``, ``null``). The subset is computed inside Postgres with
``INSERT ... SELECT <expressions> FROM staging``, so every transform is a SQL expression here;
:func:`apply` is its pure-Python twin, used to verify what the store holds against what the org had.

:data:`KINDS` is the registry: each transform is declared once, and the policy model and its describe
checks read it. Adding one is one :class:`Kind` entry (and its test).

The ``hash`` transform needs HMAC-SHA256 in SQL. Managed Postgres may lack pgcrypto (and the embedded
server has no extensions at all), so :data:`HMAC_FUNCTION_DDL` builds it from the built-in ``sha256``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retention.soql_filter import ID_TYPES, TEXT_TYPES

if TYPE_CHECKING:
    from psycopg import sql

# Name of the query parameter that carries the HMAC key: the key is always bound, never inlined in SQL,
# so it cannot leak into the Postgres log, pg_stat_statements or an error message that quotes the query.
KEY_PARAM = "hmac_key"
DEFAULT_SCHEMA = "retention"

_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104's B)
_IPAD = "36" * _BLOCK
_OPAD = "5c" * _BLOCK
# The key padded to one block, as bit(512) so that Postgres can XOR it: bytea has no XOR operator.
# Keys longer than a block are hashed first; the two substr() pick one branch without CASE, which keeps
# the body strict so the planner can inline the function and fold the key-only parts to constants.
# Folded, those parts show in EXPLAIN VERBOSE: keep auto_explain's verbose logging off on the store.
_PADDED_KEY = (
    "('x' || rpad(encode(substr(key, 1, 64 * (length(key) <= 64)::int)"
    " || substr(sha256(key), 1, 32 * (length(key) > 64)::int), 'hex'), 128, '0'))::bit(512)"
)


def _xored_key(pad_hex: str) -> str:
    # bit_send is bit(n)'s binary wire format: a 4-byte bit count, then the bits as bytes.
    return f"substr(bit_send({_PADDED_KEY} # X'{pad_hex}'), 5)"


# Text, not sql.SQL: the policy model imports this module at DAG parse, and psycopg is slow to import.
HMAC_FUNCTION_DDL = (
    "CREATE OR REPLACE FUNCTION {schema}.hmac_sha256(key bytea, message bytea)\n"
    "RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $hmac$\n"
    f"SELECT sha256({_xored_key(_OPAD)} || sha256({_xored_key(_IPAD)} || message))\n"
    "$hmac$"
)
"""HMAC-SHA256 (RFC 2104) as a SQL function; ``{schema}`` is filled in by :func:`hmac_ddl`."""


def hmac_ddl(schema: str = DEFAULT_SCHEMA) -> sql.Composed:
    """The ``CREATE OR REPLACE FUNCTION <schema>.hmac_sha256`` statement, for the store's DDL step."""
    from psycopg import sql

    return sql.SQL(HMAC_FUNCTION_DDL).format(schema=sql.Identifier(schema))


def hmac_hex(key: bytes, text: str) -> str:
    """HMAC-SHA256 hex of ``text`` (UTF-8): what ``hmac_sha256`` in SQL yields for the same key."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Kind:
    """One retain transform, declared once.

    :param name: its name in a policy.
    :param sql: the SQL expression, with ``{column}`` (the staging column), ``{n}``, ``{key}`` (the bound
        HMAC key) and ``{schema}`` (the schema of ``hmac_sha256``) filled in by :func:`expression`.
    :param apply: the Python twin, ``(value, n, key) -> retained``; never called with None.
    :param result_type: the cache column's Postgres type; None keeps the source column's.
    :param sized: written ``name:N``, N a positive character count.
    :param field_types: the Salesforce types it applies to (None: any), checked against describe.
    :param needs: how a policy error names ``field_types``.
    """

    name: str
    sql: str
    apply: Callable[[Any, int | None, bytes], Any]
    result_type: str | None = None
    sized: bool = False
    field_types: frozenset[str] | None = None
    needs: str = ""


def _email_domain(value: Any, n: int | None, key: bytes) -> str | None:
    text = pg_text(value)
    if "@" not in text:
        return None
    return text.rpartition("@")[2].translate(_ASCII_LOWER)


def _month(value: Any, n: int | None, key: bytes) -> dt.date:
    d = _as_datetime(value)
    return dt.date(d.year, d.month, 1)


_DATES = frozenset({"date", "datetime"})

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("keep", "{column}", lambda value, n, key: value),
    # ASCII-only lower-casing (the "C" collation) so the result never depends on the server's locale.
    Kind("email_domain", "lower(substring({column}::text from '@([^@]*)$') COLLATE \"C\")", _email_domain,
         result_type="text", field_types=frozenset({"email", "string"}), needs="an email or string field"),
    Kind("year", "extract(year FROM {column})::integer", lambda value, n, key: _as_datetime(value).year,
         result_type="integer", field_types=_DATES, needs="a date or datetime field"),
    # Through timestamp, not timestamptz: date_trunc on a date would otherwise depend on TimeZone.
    Kind("month", "date_trunc('month', {column}::timestamp)::date", _month,
         result_type="date", field_types=_DATES, needs="a date or datetime field"),
    Kind("truncate", "left({column}::text, {n})", lambda value, n, key: pg_text(value)[:n],
         result_type="text", sized=True, field_types=TEXT_TYPES, needs="a text field"),
    Kind("last", "right({column}::text, {n})", lambda value, n, key: pg_text(value)[-n:],
         result_type="text", sized=True, field_types=TEXT_TYPES | ID_TYPES, needs="a text field"),
    Kind("hash", "encode({schema}.hmac_sha256({key}::bytea, convert_to({column}::text, 'UTF8')), 'hex')",
         lambda value, n, key: hmac_hex(key, pg_text(value)), result_type="char(64)"),
    # Untyped NULL takes the cache column's type on INSERT.
    Kind("null", "NULL", lambda value, n, key: None),
)}


def _kind(name: str, n: int | None) -> Kind:
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown retain transform {name!r}; expected one of {', '.join(KINDS)}")
    if kind.sized and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"transform {name!r} needs a positive length, got {n!r}")
    return kind


def expression(
    kind: str,
    n: int | None,
    column: sql.Composable,
    *,
    key_param: sql.Composable | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> sql.Composable:
    """The SQL expression that turns ``column`` of a staging row into its retained value.

    :param kind: one of :data:`KINDS`.
    :param n: the character count of ``truncate``/``last``; None otherwise.
    :param column: the source column, e.g. ``sql.Identifier("s", "email")``.
    :param key_param: the placeholder bound to the HMAC key (bytes) when the query runs; default ``%(hmac_key)s``.
    :param schema: the schema holding ``hmac_sha256`` (see :func:`hmac_ddl`).
    """
    from psycopg import sql

    key = sql.Placeholder(KEY_PARAM) if key_param is None else key_param
    return sql.SQL(_kind(kind, n).sql).format(column=column, n=sql.Literal(n), key=key, schema=sql.Identifier(schema))


def result_type(kind: str, source_pg_type: str) -> str:
    """The Postgres type of the cache column that holds ``kind`` applied to a ``source_pg_type`` column."""
    if kind not in KINDS:
        raise ValueError(f"unknown retain transform {kind!r}")
    return KINDS[kind].result_type or source_pg_type


def apply(kind: str, n: int | None, value: Any, *, key: bytes) -> Any:
    """Pure-Python twin of :func:`expression`, to check stored values one by one.

    Values are what psycopg returns for the staging column (str, date, datetime, Decimal, ...); ``year``
    and ``month`` also take ISO strings as the Salesforce API returns them. ``hash`` and the text
    transforms read the value's Postgres text form (DateStyle ISO; a timestamptz in its own offset).
    """
    spec = _kind(kind, n)
    if value is None:
        return None
    return spec.apply(value, n, key)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        # An aware value is read in UTC, as the store's sessions run with TimeZone=UTC.
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        return _as_datetime(dt.datetime.fromisoformat(value.strip()))
    raise TypeError(f"expected a date, datetime or ISO string, got {type(value).__name__}")


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


def _offset(value: dt.datetime | dt.time) -> str:
    delta = value.utcoffset()
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


def _float_text(value: float) -> str:
    # float8out: shortest round-trip digits (as repr), scientific when the exponent is < -4 or >= 15.
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(digits) + exponent  # position of the decimal point after the first digit's place
    e10 = point - 1
    prefix = "-" if sign else ""
    if -4 <= e10 < 15:
        if point <= 0:
            return f"{prefix}0.{'0' * -point}{text}"
        if point >= len(text):
            return prefix + text + "0" * (point - len(text))
        return f"{prefix}{text[:point]}.{text[point:]}"
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    return f"{prefix}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"


def pg_text(value: Any) -> str:
    """The text Postgres prints for ``value`` (``<col>::text`` with DateStyle ISO)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, decimal.Decimal):
        return "NaN" if value.is_nan() else format(value, "f")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") + _fraction(value.microsecond) + _offset(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S") + _fraction(value.microsecond) + _offset(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)
