"""Views for Salesforce External Objects: each policy's retained copies, seen from Salesforce.

Privacy Center's documentation ("Heroku + Heroku Connect", Salesforce Help,
https://help.salesforce.com/s/articleView?id=xcloud.heroku_connect.htm) says to configure External Objects only
on the cache tables, as those match the subset chosen for retention (the ``salesforce`` schema is the whole synced
record), and warns that anyone with access to the store reads every table. Heroku External Objects
(https://devcenter.heroku.com/articles/heroku-external-objects) offers any table or view of the database over
OData 4.0, for Salesforce Connect. So each policy gets a view in a schema of its own (``retention_external``), with
only the retained fields of the records the policy settled and the record's Salesforce Id (``sfid``, the External
Object's external id; a cascade child's view also has its parent's, ``parent_sfid``), and the ``retention_external``
role reads those views and nothing else. The bookkeeping columns (run, status, errors, Bulk job ids) stay out.

The pipeline keeps each view in step with its cache table whenever extract makes or widens that table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from retention.cache import column, table

if TYPE_CHECKING:
    from retention.policy import Policy

SCHEMA = "retention_external"
# Only records whose action is done: their copy is what remains of them. Pending, failed or refused records are
# still whole in Salesforce.
SHOWN_STATUS = "done"


def view(policy: Policy, retain_table: str | None = None) -> sql.Identifier:
    """``retention_external.<policy id>``; a cascade child's: ``<policy id>__<its cache table>``."""
    return sql.Identifier(SCHEMA, policy.id if retain_table is None else f"{policy.id}__{retain_table}")


def visible(retain) -> list[str]:
    """The retained fields a view shows: all but the encrypted ones (``retain.encrypt``), whose ciphertext no External
    Object can read; they are read back with ``python -m retention decrypt`` only."""
    encrypted = {f.lower() for f in retain.encrypt}
    return [f for f in retain.fields if f.lower() not in encrypted]


def ensure(conn, policy: Policy, retain_table: str, fields: list[str], *, child: bool = False) -> None:
    """(Re)create the policy's view over ``cache.<retain_table>``, in the caller's transaction. Dropped and made
    again rather than replaced: a changed policy may reorder or drop retained fields, which CREATE OR REPLACE
    VIEW refuses. The grant to the views role comes from the pipeline's default privileges (store-setup)."""
    name = view(policy, retain_table if child else None)
    cols = [sql.SQL("sfid")]
    cols += [sql.SQL("_parent_sfid AS parent_sfid")] if child else []
    cols += [column(f) for f in sorted(fields, key=str.lower)]
    conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(name))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT {} FROM {} WHERE _retention_policy = {} AND _action_status = {}")
                 .format(name, sql.SQL(", ").join(cols), table(retain_table), sql.Literal(policy.id),
                         sql.Literal(SHOWN_STATUS)))
