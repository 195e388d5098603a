"""Privacy holds, in the three places they are read: the org (PrivacyHold, through the Salesforce hook), Heroku
Connect's mirror of PrivacyHold, and the store's own copy (``retention.privacy_holds``, kept by the purge so that
a hold on a record already deleted in the org still protects its retained copy).

A hold is in force when ``IsActive`` and its ``EndDate`` is empty or not passed (Object Reference: PrivacyHold;
"Add a condition to your policy to exclude records with an active Privacy Hold status"). Without the Privacy
Center licence and the "Manage Privacy Hold" permission, PrivacyHold does not exist for the API user: then
nothing may act as if there were no holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from retention.hooks.store import LEDGER_SCHEMA, MIRROR_SCHEMA

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook

UNAVAILABLE = ("PrivacyHold is not available to the API user: it needs the Privacy Center license and the "
               "\"Manage Privacy Hold\" permission (and API version 59.0 or later). Nothing was touched.")
_STORE_COPY = sql.Identifier(LEDGER_SCHEMA, "privacy_holds")


class HoldsUnavailable(Exception):
    """The org's privacy holds cannot be read (see UNAVAILABLE)."""


def in_org(sf: SalesforceBulk2Hook) -> set[str]:
    """Ids of the records under a hold in force in the org now.

    :raises HoldsUnavailable: no PrivacyHold for this user.
    """
    from retention.hooks.salesforce_bulk import ObjectUnavailable

    try:
        return sf.active_hold_ids()
    except ObjectUnavailable as err:
        raise HoldsUnavailable(UNAVAILABLE) from err


def in_mirror(alias: str) -> sql.Composable:
    """SQL: the row ``alias`` (with an ``sfid``) is under a hold in force, in Connect's mirror of PrivacyHold."""
    return sql.SQL(
        "EXISTS (SELECT 1 FROM {} h WHERE h.referencerecordid = {}.sfid AND h.isactive"
        " AND NOT coalesce(h.isdeleted, false)"
        " AND (h.enddate IS NULL OR h.enddate >= (now() AT TIME ZONE 'UTC')::date))"
    ).format(sql.Identifier(MIRROR_SCHEMA, "privacyhold"), sql.Identifier(alias))


def in_store(conn, alias: str) -> sql.Composable:
    """SQL: the row ``alias`` is under a hold in force, in the store's copy of the holds or in Connect's mirror
    when the mirror has PrivacyHold."""
    from retention.cache import table_exists

    held = sql.SQL(
        "EXISTS (SELECT 1 FROM {} h WHERE h.record_id = {}.sfid AND h.is_active "
        "AND (h.end_date IS NULL OR h.end_date >= (now() AT TIME ZONE 'UTC')::date))"
    ).format(_STORE_COPY, sql.Identifier(alias))
    if table_exists(conn, sql.Identifier(MIRROR_SCHEMA, "privacyhold")):
        held = sql.SQL("({} OR {})").format(held, in_mirror(alias))
    return held


def copy_to_store(store: RetentionStoreHook, sf: SalesforceBulk2Hook) -> int:
    """Replace the store's copy of the org's privacy holds (all of them, active or not) in one transaction.

    :raises HoldsUnavailable: no PrivacyHold for this user.
    """
    from retention.hooks.salesforce_bulk import ObjectUnavailable

    try:
        found = sf.privacy_holds()
    except ObjectUnavailable as err:
        raise HoldsUnavailable(UNAVAILABLE) from err
    with store.connect() as conn:
        conn.execute(sql.SQL("DELETE FROM {}").format(_STORE_COPY))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} (hold_id, record_id, is_active, registered_date, end_date) "
                        "VALUES (%s, %s, %s, %s, %s)").format(_STORE_COPY),
                [(h["Id"], h["ReferenceRecordId"], bool(h["IsActive"]), h.get("RegisteredDate"), h.get("EndDate"))
                 for h in found])
        conn.execute(sql.SQL("INSERT INTO {} (mirrored_at, holds) VALUES (now(), %s) ON CONFLICT (singleton) "
                             "DO UPDATE SET mirrored_at = excluded.mirrored_at, holds = excluded.holds")
                     .format(sql.Identifier(LEDGER_SCHEMA, "holds_mirror")), (len(found),))
    return len(found)
