"""Encryption of chosen retained columns (a policy's ``retain.encrypt``): AES-256-GCM with the key of an Airflow
connection, so that someone who reads the store (an analyst, a backup, a leaked dump) reads ciphertext only.

A value is stored as text, ``enc:v1:<key id>:<base64url(nonce | ciphertext | tag)>``. The key id (the first 8 hex
digits of the key's SHA-256) names the key that wrote it, so keys can be rotated: new values are written with the
connection's current key (its password), older ones still read with a previous key (its extra's
``previous_keys``). The authenticated data binds each value to its place, ``<table>.<column>:<sfid>``: a value
copied onto another record or column, or changed by one bit, is refused, never decrypted to something else.

Pure logic, no I/O: ``retention.steps.load`` encrypts the subset before it reaches the cache, and
``python -m retention decrypt`` reads it back. ``cryptography`` is imported inside the functions (DAG parse).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retention.policy import Policy

# The Airflow connection holding the key: password = base64 of 32 random bytes (`openssl rand -base64 32`).
KEY_CONN_ID = "retention_encryption_key"
PREFIX = "enc:v1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per value (2^-32 collision bound far above any cache's size)


class EncryptionError(ValueError):
    """A key or a stored value that cannot be used; the message says which and why, never the key itself."""


def key_id(key: bytes) -> str:
    """A short, public name of a key: which key wrote a value, without revealing anything of the key."""
    return hashlib.sha256(b"retention-encryption-key-id:" + key).hexdigest()[:8]


def new_key() -> str:
    """A fresh key, base64, for the connection's password."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def context(table: str, column: str, sfid: str) -> str:
    """Where a value belongs: its authenticated data."""
    return f"{table}.{column.lower()}:{sfid}"


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionError(f"{where} is not base64 (expected 32 random bytes, base64: openssl rand -base64 32)") \
            from None
    if len(key) != KEY_BYTES:
        raise EncryptionError(f"{where} is {len(key)} bytes; AES-256 needs {KEY_BYTES} (openssl rand -base64 32)")
    return key


@dataclass(frozen=True)
class Keyring:
    """The current key (writes and reads) and previous keys (reads only, during a rotation)."""

    # Never in a repr: a keyring in a log line or a traceback must not print the keys.
    current: bytes = field(repr=False)
    previous: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_connection(cls, password: str | None, extra: Mapping[str, Any] | None = None, *,
                        conn_id: str = KEY_CONN_ID) -> Keyring:
        """The keyring of an Airflow connection: ``password`` the current key, ``extra.previous_keys`` older ones."""
        if not password:
            raise EncryptionError(f"connection '{conn_id}' has no password: set it to a base64 key "
                                  "(openssl rand -base64 32)")
        previous = (extra or {}).get("previous_keys") or []
        if isinstance(previous, str):
            previous = [previous]
        if not isinstance(previous, list) or not all(isinstance(k, str) for k in previous):
            raise EncryptionError(f"connection '{conn_id}': extra previous_keys must be a list of base64 keys")
        return cls(_decode_key(password, f"connection '{conn_id}': password"),
                   tuple(_decode_key(k, f"connection '{conn_id}': extra previous_keys[{n}]")
                         for n, k in enumerate(previous)))

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def _keys(self) -> dict[str, bytes]:
        return {key_id(k): k for k in (*self.previous, self.current)}

    def encrypt(self, plaintext: str, where: str) -> str:
        """``plaintext`` (a value's Postgres text form) as a stored token, bound to ``where`` (:func:`context`)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext.encode("utf-8"), where.encode("utf-8"))
        return f"{PREFIX}{self.current_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, where: str) -> str:
        """The plaintext of a stored token; refuses a token of an unknown key, altered, or moved from ``where``."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not token.startswith(PREFIX):
            raise EncryptionError(f"{where}: not an encrypted value (no {PREFIX} prefix)")
        kid, sep, body = token[len(PREFIX):].partition(":")
        if not sep:
            raise EncryptionError(f"{where}: malformed encrypted value")
        key = self._keys().get(kid)
        if key is None:
            raise EncryptionError(f"{where}: written with key {kid}, which the connection does not hold (it has "
                                  f"{', '.join(sorted(self._keys()))}); add that key to extra previous_keys")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except (binascii.Error, ValueError):
            raise EncryptionError(f"{where}: malformed encrypted value") from None
        if len(raw) < NONCE_BYTES + 16:
            raise EncryptionError(f"{where}: malformed encrypted value (too short)")
        try:
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], where.encode("utf-8"))
        except InvalidTag:
            raise EncryptionError(f"{where}: the value does not authenticate with key {kid}: it was altered, or "
                                  "belongs to another record or column") from None
        return plain.decode("utf-8")

    def encrypt_row(self, table: str, sfid: str, columns: Iterable[str], values: Iterable[str | None]) -> list:
        """One subset row's encrypted columns (None stays None: an empty field has nothing to hide)."""
        return [None if v is None else self.encrypt(v, context(table, c, sfid))
                for c, v in zip(columns, values, strict=True)]


# ------------------------------------------------------------------------------------------- read back


def read_back(conn, policy: Policy, keyring: Keyring, sfids: Iterable[str] | None = None):
    """The policy's retained rows with their encrypted fields decrypted, one dict per row (``table`` names the cache
    table: the policy's own, or a cascade child's). A value that does not decrypt raises EncryptionError naming
    the record and column; nothing is written."""
    from psycopg import sql

    from retention.cache import table

    ids = list(sfids) if sfids is not None else None
    for retain in (policy.retain, *(child.retain for child in policy.cascade)):
        if not retain.encrypt:
            continue
        fields = list(retain.fields)
        query = sql.SQL("SELECT * FROM {} WHERE _retention_policy = %s{} ORDER BY sfid").format(
            table(retain.table), sql.SQL(" AND sfid = ANY(%s)" if ids is not None else ""))
        cur = conn.execute(query, (policy.id, ids) if ids is not None else (policy.id,))
        names = [d.name for d in cur.description]
        for values in cur:
            row = dict(zip(names, values, strict=True))
            out = {"table": f"cache.{retain.table}", "sfid": row["sfid"]}
            if "_parent_sfid" in row:
                out["_parent_sfid"] = row["_parent_sfid"]
            for name in fields:
                value = row[name.lower()]
                if name in retain.encrypt and value is not None:
                    value = keyring.decrypt(value, context(retain.table, name, row["sfid"]))
                out[name] = value
            yield out
