"""Evidence of retention runs for auditors: the ledger's hash chain, its verification, and exports.

Every ledger row's ``row_hash`` is the SHA-256 of a canonical JSON form of the row's evidence together
with the previous row's hash. Editing any field, deleting a row or inserting one breaks the chain from
that row on, and ``verify`` names the first row where it breaks.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every column of retention.runs except the chain's own; id orders the chain but is not hashed, so
# a dump and restore into a fresh table verifies the same.
EVIDENCE_FIELDS = (
    "policy_id", "run_key", "dag_run_id", "policy_hash", "object", "action", "source", "cutoff", "dry_run",
    "eligible", "held", "staged", "retained", "acted", "failed", "salesforce_count", "bulk_job_ids",
    "holds_applied", "validation", "status", "message", "started_at", "finished_at", "timings",
)
# Columns added later: hashed only when set, so rows written before they existed verify as they were sealed.
LATER_EVIDENCE_FIELDS = ("refused", "blocked", "blocked_records", "cascade")
LOCK_KEY = "retention.runs"


def _plain(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def row_hash(row: dict, prev_hash: str | None) -> str:
    """The hash of one ledger row, chained to the previous row's hash."""
    body = {name: _plain(row.get(name)) for name in EVIDENCE_FIELDS}
    body.update({name: _plain(row[name]) for name in LATER_EVIDENCE_FIELDS if row.get(name) is not None})
    body["prev_hash"] = prev_hash
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal_last_row(conn, row_id: int) -> str:
    """Chain the just-inserted row ``row_id`` to its predecessor. Call inside the inserting transaction,
    after ``lock``; hashes the row as stored, so verification reads back exactly what was hashed."""
    prev = conn.execute("SELECT row_hash FROM retention.runs WHERE id < %s ORDER BY id DESC LIMIT 1",
                        (row_id,)).fetchone()
    prev_hash = prev[0] if prev else None
    row = _rows(conn, "WHERE id = %s", (row_id,))[0]
    sealed = row_hash(row, prev_hash)
    conn.execute("UPDATE retention.runs SET prev_hash = %s, row_hash = %s WHERE id = %s", (prev_hash, sealed, row_id))
    return sealed


# jsonb columns of retention.runs: appended values are sent as JSON.
_JSON_FIELDS = frozenset({"bulk_job_ids", "holds_applied", "validation", "timings", "blocked_records", "cascade"})


def append(conn, row: dict[str, Any], *, then: Callable[[int], dict[str, Any]] | None = None) -> int:
    """Append one run's evidence to the ledger (``retention.runs``) and chain it to the row before: the one way
    the product writes a ledger row. ``then(row_id)`` runs before the row is sealed, for evidence that needs the
    row's id first (the purge's purged ids); the columns it returns are set on the row. Call inside the writing
    transaction."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    known = (*EVIDENCE_FIELDS, *LATER_EVIDENCE_FIELDS)
    unknown = set(row) - set(known)
    if unknown:
        raise ValueError(f"not a ledger column: {', '.join(sorted(unknown))}")

    def value(name: str, v):
        return Jsonb(v, dumps=lambda o: json.dumps(o, default=str)) if name in _JSON_FIELDS and v is not None else v

    lock(conn)
    names = [n for n in known if n in row]
    row_id = conn.execute(
        sql.SQL("INSERT INTO retention.runs ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))),
        [value(n, row[n]) for n in names]).fetchone()[0]
    later = then(row_id) if then else {}
    if later:
        unknown = set(later) - set(known)
        if unknown:
            raise ValueError(f"not a ledger column: {', '.join(sorted(unknown))}")
        conn.execute(sql.SQL("UPDATE retention.runs SET {} WHERE id = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in later)),
            [*(value(n, v) for n, v in later.items()), row_id])
    seal_last_row(conn, row_id)
    return row_id


def lock(conn) -> None:
    """Serialise appends: two runs sealing at once would both chain to the same predecessor."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK_KEY,))


def _rows(conn, where: str = "", params: tuple = ()) -> list[dict]:
    cur = conn.execute(f"SELECT * FROM retention.runs {where} ORDER BY id", params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    broken_id: int | None = None
    reason: str = ""
    head: str | None = None  # the newest row's hash

    def describe(self) -> str:
        if self.ok:
            return (f"ledger intact: {self.rows} rows; head {self.head or '-'} (keep it: a later "
                    "`verify --head` with it detects rows removed from the end)")
        if self.broken_id is None:
            return f"ledger broken: {self.reason}"
        return f"ledger broken at row {self.broken_id}: {self.reason}"


def verify(conn, head: str | None = None) -> Verification:
    """Recompute the chain over every row; the first row that does not match is named.

    A chain cannot show that its newest rows were removed; ``head``, a row hash an auditor noted from an
    earlier verify, must still be in it."""
    prev_hash = None
    rows = _rows(conn)
    seen = set()
    for row in rows:
        label = f"row {row['id']} (policy {row['policy_id']}, run {row['run_key']})"
        if row["prev_hash"] != prev_hash:
            return Verification(False, len(rows), row["id"],
                                f"{label} does not link to the row before it (a row was removed, inserted or "
                                "its link edited)")
        if row["row_hash"] != row_hash(row, prev_hash):
            return Verification(False, len(rows), row["id"], f"{label} was changed after it was written")
        prev_hash = row["row_hash"]
        seen.add(prev_hash)
    if head is not None and head not in seen:
        return Verification(False, len(rows), None,
                            f"the row with hash {head} (an earlier head) is not in the ledger: rows were removed "
                            "from its end, or the chain was rewritten", prev_hash)
    return Verification(True, len(rows), head=prev_hash)


EXPORT_FIELDS = (
    "id", "policy_id", "policy_hash", "run_key", "dag_run_id", "object", "action", "source", "cutoff", "dry_run",
    "eligible", "held", "staged", "retained", "acted", "failed", "salesforce_count", "bulk_job_ids",
    "holds_applied", "status", "message", "started_at", "finished_at", "row_hash",
)


def export(conn, policy_id: str, since: dt.date, out_dir: Path) -> tuple[Path, Path]:
    """Write the policy's runs since ``since`` as JSON and CSV for an auditor, with the chain's verdict."""
    check = verify(conn)
    rows = _rows(conn, "WHERE policy_id = %s AND started_at >= %s", (policy_id, since))
    records = [{k: _plain(r[k]) for k in EXPORT_FIELDS} for r in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"evidence_{policy_id}_{since.isoformat()}"
    report = {
        "policy_id": policy_id,
        "since": since.isoformat(),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "ledger_verification": {"ok": check.ok, "rows": check.rows, "detail": check.describe()},
        "runs": records,
    }
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, default=str))
    csv_path = stem.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in rec.items()})
    return json_path, csv_path
