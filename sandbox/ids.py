"""Salesforce record IDs: 15-character case-sensitive keys and their 18-character checksummed form.

A real ID is the object's 3-character key prefix, a 2-character pod/instance code, a reserved
character and a 9-digit base-62 serial. The 3 extra characters of the 18-character form encode which
of the first 15 are upper-case letters, so the ID survives case-insensitive systems (Excel, SQL
collations). Clients check this, so the sandbox must produce exactly the same suffix.
"""

from __future__ import annotations

import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_SUFFIX_CHARS = string.ascii_uppercase + "012345"
# The sandbox org's instance code; any two base-62 characters are valid.
INSTANCE = "Dn"


def checksum(id15: str) -> str:
    """The 3-character suffix Salesforce appends to a 15-character ID."""
    if len(id15) != 15:
        raise ValueError(f"expected a 15-character ID, got {id15!r}")
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        suffix += _SUFFIX_CHARS[bits]
    return suffix


def to18(id15: str) -> str:
    return id15 + checksum(id15)


def is_valid(record_id: str) -> bool:
    """True for a well-formed 15-character ID or an 18-character ID whose checksum matches."""
    if len(record_id) not in (15, 18) or any(ch not in BASE62 for ch in record_id):
        return False
    return len(record_id) == 15 or checksum(record_id[:15]) == record_id[15:]


def make_id(key_prefix: str, serial: int) -> str:
    """The 18-character ID of the serial-th record with this key prefix."""
    if serial < 0 or serial >= 62**9:
        raise ValueError("serial out of range")
    digits = ""
    for _ in range(9):
        serial, rem = divmod(serial, 62)
        digits = BASE62[rem] + digits
    return to18(key_prefix + INSTANCE + "0" + digits)


def serial_of(record_id: str) -> int:
    """The base-62 serial inside an ID made by ``make_id``."""
    serial = 0
    for ch in record_id[6:15]:
        serial = serial * 62 + BASE62.index(ch)
    return serial
