"""Retain transforms: which part of a field the retention store keeps.

A policy's ``retain.fields`` maps each field to a transform (``keep``, ``email_domain``, ``year``,
``month``, ``truncate:N``, ``last:N``, ``hash``, ``null``). The subset is computed inside Postgres with
``INSERT ... SELECT <expressions> FROM staging``, so every transform is a SQL expression builder here;
:func:`apply` is its pure-Python twin, used to verify what the store holds against what the org had.

The ``hash`` transform needs HMAC-SHA256 in SQL. Managed Postgres may lack pgcrypto (and the embedded
server has no extensions at all), so :data:`HMAC_FUNCTION_DDL` builds it from the built-in ``sha256``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from typing import Any

from psycopg import sql

KINDS = ("keep", "email_domain", "year", "month", "truncate", "last", "hash", "null")
# Only these take the ":N" argument of the policy syntax, and it must be a positive character count.
KINDS_WITH_N = frozenset({"truncate", "last"})

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


HMAC_FUNCTION_DDL = sql.SQL(
    "CREATE OR REPLACE FUNCTION {schema}.hmac_sha256(key bytea, message bytea)\n"
    "RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $hmac$\n"
    f"SELECT sha256({_xored_key(_OPAD)} || sha256({_xored_key(_IPAD)} || message))\n"
    "$hmac$"
)
"""HMAC-SHA256 (RFC 2104) as a SQL function; ``{schema}`` is filled in by :func:`hmac_ddl`."""


def hmac_ddl(schema: str = DEFAULT_SCHEMA) -> sql.Composed:
    """The ``CREATE OR REPLACE FUNCTION <schema>.hmac_sha256`` statement, for the store's DDL step."""
    return HMAC_FUNCTION_DDL.format(schema=sql.Identifier(schema))


def parse(spec: str) -> tuple[str, int | None]:
    """Split the policy syntax (``"truncate:5"``) into ``(kind, n)``; raises ValueError on a bad spec."""
    kind, sep, arg = str(spec).strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown retain transform {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in KINDS_WITH_N:
        if not sep or not arg.strip().isdigit() or int(arg) < 1:
            raise ValueError(f"transform {kind!r} needs a positive length, e.g. '{kind}:4'")
        return kind, int(arg)
    if sep:
        raise ValueError(f"transform {kind!r} takes no argument")
    return kind, None


def _check(kind: str, n: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown retain transform {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in KINDS_WITH_N and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"transform {kind!r} needs a positive length, got {n!r}")


def expression(
    kind: str,
    n: int | None,
    column: sql.Composable,
    *,
    key_param: sql.Composable = sql.Placeholder(KEY_PARAM),
    schema: str = DEFAULT_SCHEMA,
) -> sql.Composable:
    """The SQL expression that turns ``column`` of a staging row into its retained value.

    :param kind: one of :data:`KINDS`.
    :param n: the character count of ``truncate``/``last``; None otherwise.
    :param column: the source column, e.g. ``sql.Identifier("s", "email")``.
    :param key_param: the placeholder bound to the HMAC key (bytes) when the query runs.
    :param schema: the schema holding ``hmac_sha256`` (see :func:`hmac_ddl`).
    """
    _check(kind, n)
    if kind == "keep":
        return column
    if kind == "null":
        # Untyped NULL takes the cache column's type on INSERT.
        return sql.SQL("NULL")
    if kind == "email_domain":
        # ASCII-only lower-casing (the "C" collation) so the result never depends on the server's locale.
        return sql.SQL("lower(substring({}::text from '@([^@]*)$') COLLATE \"C\")").format(column)
    if kind == "year":
        return sql.SQL("extract(year FROM {})::integer").format(column)
    if kind == "month":
        # Through timestamp, not timestamptz: date_trunc on a date would otherwise depend on TimeZone.
        return sql.SQL("date_trunc('month', {}::timestamp)::date").format(column)
    if kind == "truncate":
        return sql.SQL("left({}::text, {})").format(column, sql.Literal(n))
    if kind == "last":
        return sql.SQL("right({}::text, {})").format(column, sql.Literal(n))
    # hash
    return sql.SQL("encode({}.hmac_sha256({}::bytea, convert_to({}::text, 'UTF8')), 'hex')").format(
        sql.Identifier(schema), key_param, column
    )


def result_type(kind: str, source_pg_type: str) -> str:
    """The Postgres type of the cache column that holds ``kind`` applied to a ``source_pg_type`` column."""
    if kind not in KINDS:
        raise ValueError(f"unknown retain transform {kind!r}")
    return {
        "year": "integer",
        "month": "date",
        "hash": "char(64)",
        "email_domain": "text",
        "truncate": "text",
        "last": "text",
    }.get(kind, source_pg_type)


def hmac_hex(key: bytes, text: str) -> str:
    """HMAC-SHA256 hex of ``text`` (UTF-8): what ``hmac_sha256`` in SQL yields for the same key."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def apply(kind: str, n: int | None, value: Any, *, key: bytes) -> Any:
    """Pure-Python twin of :func:`expression`, to check stored values one by one.

    Values are what psycopg returns for the staging column (str, date, datetime, Decimal, ...); ``year``
    and ``month`` also take ISO strings as the Salesforce API returns them. ``hash`` and the text
    transforms read the value's Postgres text form (DateStyle ISO; a timestamptz in its own offset).
    """
    _check(kind, n)
    if value is None or kind == "null":
        return None
    if kind == "keep":
        return value
    if kind == "year":
        return _as_datetime(value).year
    if kind == "month":
        d = _as_datetime(value)
        return dt.date(d.year, d.month, 1)
    if kind == "email_domain":
        text = pg_text(value)
        if "@" not in text:
            return None
        return text.rpartition("@")[2].translate(_ASCII_LOWER)
    if kind == "truncate":
        return pg_text(value)[:n]
    if kind == "last":
        return pg_text(value)[-n:]
    return hmac_hex(key, pg_text(value))


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
