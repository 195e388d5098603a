"""Is the Heroku Connect mirror of an object readable and current enough for a run to read it?

Connect's own word is not enough: a mapping's ``DATA_SYNCED`` means "All rows have been synced since the
last poll" (https://devcenter.heroku.com/articles/mapping-states-reference), and Connect polls every
``sf_polling_seconds`` (600 by default; never under 10 minutes on the demo plan,
https://devcenter.heroku.com/articles/heroku-connect), so a mapping reads ``DATA_SYNCED`` for minutes after
the org changed. The mirror is therefore also checked against what the org itself reports:

1. the mapping syncs every field the run reads (else a missing-column error later; waiting won't help);
2. Connect reports the connection healthy and the mapping ``DATA_SYNCED`` with nothing pending;
3. no write to the table waits in ``_trigger_log``;
4. the org's newest ``SystemModstamp`` (one REST query) is not newer than the mirror's, and
5. the records the org deleted in the last ``DELETED_LOOKBACK`` (REST getDeleted) are gone from the mirror.

``check_mirror`` is the one place these are checked, and ``check_mirrors`` runs it over the objects of a
run: the sensor calls that in its poke and the trigger in the triggerer. They raise ``HerokuConnectError``
for what needs a person, and return (ready, explanation).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retention.hooks.heroku_connect import HerokuConnectError, HerokuConnectHook
from retention.hooks.store import MIRROR_SCHEMA

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

# How far back the deleted-records check looks. Connect polls at most every 60 minutes (2-60 per mapping),
# so a deletion older than a day that is still mirrored is long overdue too, but a day keeps the answer
# small; getDeleted itself only reaches back 15 days. It reads whole seconds: a deletion in the last
# second or so is seen on the next check.
DELETED_LOOKBACK = dt.timedelta(hours=24)
# Trigger-log states that mean a write to the mirrored table has not reached Salesforce (or failed):
# the mirror and the org disagree until Connect has processed them.
UNSETTLED_WRITE_STATES = ("NEW", "PENDING", "FAILED", "REQUEUE")
# How many of the deleted-but-still-mirrored ids an explanation names.
EXAMPLES = 3


@dataclass(frozen=True)
class Freshness:
    """The mirror of one object against the org: high-water marks and deletions."""

    object_name: str
    table: str
    org_newest: dt.datetime | None
    mirror_newest: dt.datetime | None
    deleted: int
    still_mirrored: list[str]

    @property
    def behind(self) -> bool:
        return self.org_newest is not None and (self.mirror_newest is None or self.org_newest > self.mirror_newest)

    @property
    def current(self) -> bool:
        return not self.behind and not self.still_mirrored

    def describe(self) -> str:
        lookback = _hours(DELETED_LOOKBACK)
        marks = (f"{self.object_name}'s newest SystemModstamp is {_stamp(self.org_newest)} in Salesforce and "
                 f"{_stamp(self.mirror_newest)} in {self.table}")
        if self.still_mirrored:
            examples = ", ".join(self.still_mirrored[:EXAMPLES])
            gone = (f"{len(self.still_mirrored)} of the {self.deleted} {self.object_name} records Salesforce deleted "
                    f"in the last {lookback} are still in {self.table} (e.g. {examples})")
        else:
            gone = f"the {self.deleted} records Salesforce deleted in the last {lookback} are gone from it"
        return f"{'mirror current' if self.current else 'mirror behind Salesforce'}: {marks}; {gone}"


def _stamp(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else "none (no records)"


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g} h"


def _parse_sf_datetime(value: str) -> dt.datetime:
    """A Salesforce dateTime ('2026-01-01T10:00:00.000+0000') as an aware UTC datetime."""
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(dt.UTC)


def _to_millis(value: dt.datetime | None) -> dt.datetime | None:
    """Salesforce keeps SystemModstamp to the millisecond; compare the mirror's at that precision."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000) if value else None


def unsettled_writes(store_conn_id: str, schema: str, table: str) -> int:
    """Rows of ``<schema>._trigger_log`` for ``table`` that Connect has not settled."""
    from psycopg import sql

    from retention.hooks.store import RetentionStoreHook

    query = sql.SQL("SELECT count(*) FROM {} WHERE table_name = %s AND state = ANY(%s)").format(
        sql.Identifier(schema, "_trigger_log"))
    with RetentionStoreHook(store_conn_id).connect() as conn:
        return conn.execute(query, (table, list(UNSETTLED_WRITE_STATES))).fetchone()[0]


def freshness(object_name: str, *, salesforce_conn_id: str, store_conn_id: str, schema: str = MIRROR_SCHEMA,
              now: dt.datetime | None = None, salesforce: SalesforceBulk2Hook | None = None) -> Freshness:
    """The org's high-water mark and recent deletions (two REST calls) against the mirror (one query)."""
    from psycopg import sql

    from retention.hooks.salesforce_bulk import ObjectUnavailable, SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook

    sf = salesforce or SalesforceBulk2Hook(salesforce_conn_id)
    try:
        newest_in_org = sf.newest_modstamp(object_name)
    except ObjectUnavailable as err:
        # The object does not exist for the API user (PrivacyHold without the Privacy Center licence and the
        # Manage Privacy Hold permission): no wait fixes that.
        raise HerokuConnectError(
            f"{object_name} is not available to the Salesforce API user, so its mirror cannot be checked against "
            "the org" + (": PrivacyHold needs the Privacy Center license and the \"Manage Privacy Hold\" "
                         "permission (API 59.0+)" if object_name.lower() == "privacyhold" else "")) from err
    org_newest = _parse_sf_datetime(newest_in_org) if newest_in_org else None
    end = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    deleted_at = {record_id: _parse_sf_datetime(when)
                  for record_id, when in sf.deleted_between(object_name, end - DELETED_LOOKBACK, end).items()}
    table = sql.Identifier(schema, object_name.lower())
    with RetentionStoreHook(store_conn_id).connect() as conn:
        # Connect stores timestamps in UTC without a zone.
        newest = conn.execute(sql.SQL("SELECT max(systemmodstamp) FROM {}").format(table)).fetchone()[0]
        rows = conn.execute(sql.SQL("SELECT sfid, systemmodstamp FROM {} WHERE sfid = ANY(%s)").format(table),
                            (list(deleted_at),)).fetchall() if deleted_at else []
    mirror_newest = _to_millis(newest.replace(tzinfo=dt.UTC)) if newest else None
    # A row stamped after the deletion is the record undeleted since, not a deletion Connect missed.
    still = sorted(sfid for sfid, stamp in rows
                   if stamp is None or _to_millis(stamp.replace(tzinfo=dt.UTC)) <= deleted_at[sfid])
    return Freshness(object_name, f"{schema}.{object_name.lower()}", org_newest, mirror_newest, len(deleted_at), still)


def check_mirror(object_name: str, *, required_fields: Iterable[str] = (), heroku_connect_conn_id: str,
                 store_conn_id: str, salesforce_conn_id: str, schema: str = MIRROR_SCHEMA,
                 connect: HerokuConnectHook | None = None,
                 salesforce: SalesforceBulk2Hook | None = None) -> tuple[bool, str]:
    """(ready, explanation) for the mirror of ``object_name``; the explanation names the check that is
    behind, with its numbers. Raises ``HerokuConnectError`` when waiting cannot help: an error state, a
    mapping that does not sync ``required_fields``, or no usable connection. ``connect`` and ``salesforce``:
    hooks a caller checking several objects reuses (one discovery and one login, not one per object)."""
    status = (connect or HerokuConnectHook(heroku_connect_conn_id)).sync_status(object_name)
    if status.error:
        raise HerokuConnectError(f"{status.error}; not reading a mirror Connect cannot keep current. "
                                 f"({status.describe()})")
    missing = status.missing_fields(list(required_fields))
    if missing:
        raise HerokuConnectError(
            f"Heroku Connect mapping {status.object_name} does not sync {', '.join(missing)}; add them to the mapping "
            f"in the Heroku Connect dashboard (Mappings → {status.object_name} → Edit) and wait for it to resync")
    table = object_name.lower()
    writes = unsettled_writes(store_conn_id, schema, table)
    connect = f"Heroku Connect: {status.describe()}; unsettled writes in {schema}._trigger_log: {writes}"
    if not status.synced or writes:
        return False, connect
    fresh = freshness(object_name, salesforce_conn_id=salesforce_conn_id, store_conn_id=store_conn_id, schema=schema,
                      salesforce=salesforce)
    return fresh.current, f"{fresh.describe()} ({connect})"


def check_mirrors(object_names: Iterable[str], *, required_fields: Mapping[str, Iterable[str]],
                  heroku_connect_conn_id: str, store_conn_id: str, salesforce_conn_id: str,
                  schema: str = MIRROR_SCHEMA, log: logging.Logger) -> tuple[bool, str]:
    """``check_mirror`` for each object in turn, stopping at the first not ready; (ready, explanation) of
    the last one checked. The objects share one Connect hook and one Salesforce hook (one discovery and one
    login per call, so a long wait logs in afresh at each poke)."""
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    connect = HerokuConnectHook(heroku_connect_conn_id)
    salesforce = SalesforceBulk2Hook(salesforce_conn_id)
    ready, explanation = True, "no object to check"
    for name in object_names:
        ready, explanation = check_mirror(
            name, required_fields=required_fields.get(name, ()), heroku_connect_conn_id=heroku_connect_conn_id,
            store_conn_id=store_conn_id, salesforce_conn_id=salesforce_conn_id, schema=schema,
            connect=connect, salesforce=salesforce)
        log.info("Heroku Connect mirror of %s %s: %s", name, "ready" if ready else "not ready", explanation)
        if not ready:
            break
    return ready, explanation
