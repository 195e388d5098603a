"""Store purge: retained copies older than a policy's ``retain.keep_days`` leave the cache, held ones never.

The holds are mirrored into the store from Salesforce first (``mirror_holds``), so a hold on a record
that is already deleted in the org still protects its retained copy. A purge runs in one transaction:
the cache rows go, the ids go to ``retention.purged_records`` and the ledger gets a chained row saying
what was purged, or nothing happens at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from retention import holds
from retention.cache import table_exists
from retention.hooks.store import CACHE_SCHEMA, LEDGER_SCHEMA

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy

UTC = dt.UTC
# Rows whose action finished. Rows of a run in progress (pending, submitting, submitted) are never purged:
# their copy is what makes the coming delete or mask safe.
PURGEABLE = ("done", "failed", "refused", "held")
# A purge refuses holds mirrored longer ago than this: a hold placed since would not be seen.
MAX_HOLDS_AGE = dt.timedelta(hours=1)


class PurgeError(Exception):
    """The purge must not run; the message says why."""


def mirror_holds(store: RetentionStoreHook, sf: SalesforceBulk2Hook) -> int:
    """Copy every privacy hold of the org into the store (the purge refuses an old copy); an org without
    PrivacyHold for this user stops the purge."""
    try:
        return holds.copy_to_store(store, sf)
    except holds.HoldsUnavailable as err:
        raise PurgeError(str(err)) from err


@dataclass(frozen=True)
class PurgeResult:
    ledger_id: int | None  # None for a dry run
    purge_before: dt.datetime
    purged: int
    held_ids: list[str]
    unfinished: int
    remaining: int
    purged_ids_sha256: str


def _purge_children(conn, policy: Policy, ledger_id: int) -> int:
    """A cascade child's retained copy goes with its parent's (never a held one), recorded with the same ledger
    row: children are kept as long as the parent they were deleted with."""
    purged_records = sql.Identifier(LEDGER_SCHEMA, "purged_records")
    total = 0
    for child in policy.cascade:
        table = sql.Identifier(CACHE_SCHEMA, child.retain.table)
        if not table_exists(conn, table):
            continue
        total += conn.execute(
            sql.SQL("WITH gone AS (DELETE FROM {t} c WHERE c._parent_sfid IN (SELECT sfid FROM {p} WHERE ledger_id = "
                    "%(ledger)s) AND NOT {held} RETURNING c.sfid, c._action_status, c._retained_at) INSERT INTO {p} "
                    "(ledger_id, policy_id, sfid, action_status, retained_at) SELECT %(ledger)s, %(policy)s, sfid, "
                    "_action_status, _retained_at FROM gone ON CONFLICT DO NOTHING").format(
                t=table, p=purged_records, held=holds.in_store(conn, "c")), {"ledger": ledger_id, "policy": policy.id}
        ).rowcount
    return total


def purge_before(policy: Policy, as_of: dt.datetime) -> dt.datetime:
    """Cache rows retained before this instant are past ``keep_days`` on the day ``as_of``."""
    anchor = dt.datetime.fromtimestamp(as_of.timestamp(), UTC)
    return anchor - dt.timedelta(days=policy.retain.keep_days)


def purge(store: RetentionStoreHook, policy: Policy, *, as_of: dt.datetime, dag_run_id: str,
          started_at: dt.datetime, now: dt.datetime | None = None, dry_run: bool = False) -> PurgeResult:
    """Delete the policy's cache rows retained before ``as_of - keep_days`` that are not held and whose
    action finished; record them and a ledger row, all in one transaction. A dry run counts what would go
    and changes nothing (``ledger_id`` is None)."""
    from retention import evidence

    if policy.retain.keep_days is None:
        raise PurgeError(f"policy {policy.id} has no retain.keep_days: its retained copies are never purged")
    before = purge_before(policy, as_of)
    table = sql.Identifier(CACHE_SCHEMA, policy.retain.table)
    with store.connect() as conn:
        mirrored = conn.execute(sql.SQL("SELECT mirrored_at FROM {}").format(
            sql.Identifier(LEDGER_SCHEMA, "holds_mirror"))).fetchone()
        now = now or conn.execute("SELECT now()").fetchone()[0]
        if mirrored is None or now - mirrored[0] > MAX_HOLDS_AGE:
            raise PurgeError(f"privacy holds were last mirrored {mirrored[0] if mirrored else 'never'}; refusing to "
                             f"purge cache.{policy.retain.table} without a fresh copy (mirror_holds runs first)")
        # A policy that has not retained anything yet has no table: nothing to purge (still recorded).
        exists = table_exists(conn, table)
        args = {"policy": policy.id, "before": before, "purgeable": list(PURGEABLE)}

        def count(where: sql.Composable) -> int:
            if not exists:
                return 0
            return conn.execute(sql.SQL("SELECT count(*) FROM {} c WHERE {}").format(table, where), args).fetchone()[0]

        mine = sql.SQL("c._retention_policy = %(policy)s")
        past = sql.SQL("{} AND c._retained_at < %(before)s").format(mine)
        held = holds.in_store(conn, "c")
        held_ids = [r[0] for r in conn.execute(
            sql.SQL("SELECT c.sfid FROM {} c WHERE {} AND {} ORDER BY 1").format(table, past, held), args).fetchall()
        ] if exists else []
        unfinished = count(sql.SQL("{} AND NOT (c._action_status = ANY(%(purgeable)s))").format(past))
        purgeable = sql.SQL("{} AND c._action_status = ANY(%(purgeable)s) AND NOT {}").format(past, held)
        if dry_run:
            would = count(purgeable)
            return PurgeResult(None, before, would, held_ids, unfinished, count(mine) - would, "")
        # The ledger row first (its id ties the purged ids to it), the counts once the rows are gone.
        purged_records = sql.Identifier(LEDGER_SCHEMA, "purged_records")
        outcome: dict = {}

        def purge_rows(ledger_id: int) -> dict:
            purged = conn.execute(
                sql.SQL("WITH gone AS (DELETE FROM {} c WHERE {} RETURNING c.sfid, c._action_status, c._retained_at) "
                        "INSERT INTO {} (ledger_id, policy_id, sfid, action_status, retained_at) SELECT %(ledger)s, "
                        "%(policy)s, sfid, _action_status, _retained_at FROM gone").format(
                    table, purgeable, purged_records), {**args, "ledger": ledger_id}
            ).rowcount if exists else 0
            children = _purge_children(conn, policy, ledger_id) if exists else 0
            digest = conn.execute(
                sql.SQL("SELECT encode(sha256(convert_to(coalesce(string_agg(sfid, E'\\n' ORDER BY sfid), ''), "
                        "'UTF8')), 'hex') FROM {} WHERE ledger_id = %s").format(purged_records),
                (ledger_id,)).fetchone()[0]
            remaining = count(mine)
            outcome.update(purged=purged, digest=digest, remaining=remaining)
            message = (f"purged {purged} rows of cache.{policy.retain.table} retained before {before.isoformat()} "
                       f"(keep_days {policy.retain.keep_days}); kept {len(held_ids)} under privacy hold"
                       + (f" and {unfinished} whose action has not finished" if unfinished else "")
                       + (f"; with them {children} rows of their cascade children" if children else ""))
            return {"eligible": purged + len(held_ids) + unfinished, "held": len(held_ids), "retained": remaining,
                    "acted": purged, "failed": 0, "holds_applied": held_ids,
                    "validation": {"table": f"cache.{policy.retain.table}", "keep_days": policy.retain.keep_days,
                                   "purged_ids_sha256": digest, "unfinished": unfinished,
                                   "holds_mirrored_at": mirrored[0].isoformat()},
                    "message": message, "finished_at": conn.execute("SELECT now()").fetchone()[0]}

        ledger_id = evidence.append(conn, {
            "policy_id": policy.id, "run_key": f"{policy.id}__purge__{as_of.astimezone(UTC):%Y%m%dT%H%M%S}",
            "dag_run_id": dag_run_id, "policy_hash": policy.source_hash, "object": policy.object, "action": "purge",
            "source": "store", "cutoff": before, "status": "succeeded", "started_at": started_at,
        }, then=purge_rows)
    return PurgeResult(ledger_id, before, outcome["purged"], held_ids, unfinished, outcome["remaining"],
                       outcome["digest"])
