"""verify: read one chunk's records reported done back from the org with one Bulk 2.0 query job over their Id
range, so that confirming a million records costs a few API calls rather than one REST query per 500 records.

The query reads every live record of the range (not only the ones acted on): Salesforce has no cheaper way to ask
about a set of Ids that large, and a record the job reported deleted but still live is exactly what must be found.
The pages go into a temporary table by ``COPY`` and are compared with the chunk's records in SQL, so memory stays
flat however large the chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from psycopg import ClientCursor, sql

from retention.cache import copy_pages, table, table_exists
from retention.steps.act import in_chunk
from retention.steps.confirm import this_execution
from retention.steps.results import Verified
from retention.steps.run import RetentionError

if TYPE_CHECKING:
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import Policy
    from retention.steps.results import Acted, Chunk
    from retention.steps.run import Run

log = structlog.get_logger(__name__)

LIVE = sql.Identifier("retention_live")  # the org's live records of the chunk's Id range
DONE = sql.Identifier("retention_done")  # the chunk's records reported done


def page_size(policy: Policy) -> int:
    """Records per page of the read-back. A delete's range reads back little but Ids (what is left live), so its pages
    are large and few; a mask's reads back every record with its masked fields, so its pages are the extract's
    (see ``QUERY_PAGE_SIZE``)."""
    from retention.hooks.salesforce_bulk import ID_QUERY_PAGE_SIZE, QUERY_PAGE_SIZE

    return QUERY_PAGE_SIZE if policy.action == "mask" else ID_QUERY_PAGE_SIZE


def verify(store: RetentionStoreHook, sf: SalesforceBulk2Hook, policy: Policy, run: Run, chunk: Chunk,
           acted: Acted | None) -> Verified:
    """The step for one chunk: how many of its records reported done the org does not show as acted on."""
    done, params = this_execution(policy, run, acted.bulk_job_ids if acted else [], "c")
    within, chunk_params = in_chunk(chunk, sql.Identifier("c", "sfid"))
    where = sql.SQL("{} AND c._action_status = 'done' AND {}").format(done, within)
    params = [*params, *chunk_params]
    target = table(policy.retain.table)
    fields = list(policy.mask) if policy.action == "mask" else []
    with store.connect() as conn:
        if not table_exists(conn, run.staging):  # confirm already reported and dropped the working tables
            return Verified()
        # The chunk's done records in a table of their own, keyed and analysed, so that the joins below are planned
        # on real numbers (hash joins), whatever the cache's size and the selection's filter.
        with ClientCursor(conn) as cur:  # CREATE TABLE AS takes no bind parameters: bound safely client-side
            cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT c.sfid::text AS sfid FROM {} c "
                                "WHERE {}").format(DONE, target, where), params)
        count = read_back(conn, sf, policy.object, fields, page_size(policy))
        if not count:
            return Verified()
        if policy.action != "mask":
            missed = _live_done(conn)
            sample, not_applied = missed[:5], len(missed)
        else:
            sample, not_applied = _masks_not_applied(conn, run, fields)
    log.info("%s chunk %d: %d records reported done read back from Salesforce, %d not %s there", run.run_key,
             chunk.index, count, not_applied, "masked" if policy.action == "mask" else "deleted")
    return Verified(checked=count, not_applied=not_applied, sample=sample)


def read_back(conn, sf: SalesforceBulk2Hook, object_name: str, fields: list[str], size: int) -> int:
    """Key the records in the temporary table ``DONE`` (``sfid``), then copy every live record of their Id range
    (``Id`` and ``fields``) into the temporary table ``LIVE`` (``f0``, ``f1``, ...) through one Bulk 2.0 query job:
    the caller compares the two in SQL. How many records ``DONE`` holds (none: nothing is read)."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (sfid)").format(DONE))
    # The org orders Ids by their characters' codes (0-9 < A-Z < a-z, the base-62 digits' order): the range is
    # taken in the same, binary order, never the store's collation, so it covers every record of the set.
    first, last, count = conn.execute(sql.SQL(
        'SELECT min(sfid COLLATE "C"), max(sfid COLLATE "C"), count(*) FROM {}').format(DONE)).fetchone()
    if not count:
        return 0
    if not (first.isalnum() and last.isalnum()):
        raise ValueError(f"not a Salesforce Id: {first!r} or {last!r}")
    soql = f"SELECT {', '.join(['Id', *fields])} FROM {object_name} WHERE Id >= '{first}' AND Id <= '{last}'"
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
        LIVE, sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"f{n}")) for n in range(len(fields) + 1))))
    copy = sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER true)").format(LIVE)
    copy_pages(conn, copy, sf.query_pages(object_name, soql, page_size=size),
               lambda record, where: RetentionError(
                   f"{object_name} record {record} was read back from Salesforce with a NUL character in "
                   f"{', '.join(where) or 'the query result'}: not the value sent; its retained row is kept"))
    for name in (DONE, LIVE):  # fresh temporary tables have no statistics
        conn.execute(sql.SQL("ANALYZE {}").format(name))
    return count


def still_live(conn, sf: SalesforceBulk2Hook, object_name: str, done: sql.Composable) -> list[str]:
    """Of the Ids ``done`` selects (one ``sfid`` column), those the org still holds live, in Id order: one Bulk 2.0
    query job over their Id range, not a REST query per few hundred Ids. Call it in a transaction of its own (its
    temporary tables are dropped at commit)."""
    from retention.hooks.salesforce_bulk import ID_QUERY_PAGE_SIZE

    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT sfid::text AS sfid FROM ({}) d")
                 .format(DONE, done))
    return _live_done(conn) if read_back(conn, sf, object_name, [], ID_QUERY_PAGE_SIZE) else []


def _live_done(conn) -> list[str]:
    """The records of ``DONE`` that ``LIVE`` holds, in Id order."""
    return [r[0] for r in conn.execute(sql.SQL(
        'SELECT d.sfid FROM {} l JOIN {} d ON d.sfid = l.f0 ORDER BY d.sfid COLLATE "C"').format(LIVE, DONE))]


def _masks_not_applied(conn, run: Run, fields: list[str]) -> tuple[list[str], int]:
    """Records whose live values differ from what was sent, streamed with a server-side cursor."""
    cols = sql.SQL(", ").join(sql.Identifier("l", f"f{n + 1}") for n in range(len(fields)))
    # Most records read back exactly as sent: Postgres passes those (text equal, or both empty) without a row reaching
    # Python. Exact equality there implies same_csv_value's; only the rest (numbers, dates, true/false as the org
    # writes them, and real differences) are compared here.
    exact = sql.SQL(" AND ").join(
        # IS NOT DISTINCT FROM, never =: a null must make the test false, not unknown (which NOT would keep unknown,
        # and WHERE would drop: a nullified field the org still shows would pass unseen).
        sql.SQL("(NOT s.sent ? {f} OR s.sent->>{f} IS NOT DISTINCT FROM {have} OR (coalesce(s.sent->>{f}, '') = '' "
                "AND coalesce({have}, '') = ''))").format(f=sql.Literal(f), have=sql.Identifier("l", f"f{n + 1}"))
        for n, f in enumerate(fields))
    # A server-side cursor is planned for its first rows (nested loops); every row is read, so plan for all of them.
    conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    rows = conn.cursor(name="retention_verify")
    rows.itersize = 10_000
    rows.execute(sql.SQL("SELECT d.sfid, s.sent, {} FROM {} l JOIN {} d ON d.sfid = l.f0 JOIN {} s ON s.sfid = "
                         "d.sfid WHERE NOT ({})").format(cols, LIVE, DONE, run.sent, exact))
    sample: list[str] = []
    not_applied = 0
    for sfid, sent, *values in rows:
        if any(f in sent and not same_csv_value(sent[f], have) for f, have in zip(fields, values, strict=True)):
            not_applied += 1
            if len(sample) < 5:
                sample.append(sfid)
    return sample, not_applied


def same_csv_value(sent, have: str | None) -> bool:
    """Whether a Bulk query's CSV value is the one sent (kept as JSON: numbers, booleans, text, dates as text)."""
    if sent is None or sent == "":
        return have is None or have == ""  # a null reads back empty
    if have is None:
        return False
    if isinstance(sent, bool):
        return have.lower() == str(sent).lower()
    if isinstance(sent, int | float):
        try:
            return float(have) == float(sent)
        except ValueError:
            return False
    text = str(sent)
    if have == text:
        return True
    # Dates and datetimes: the org answers in its own format (2024-01-31T10:00:00.000Z for 2024-01-31 10:00:00+00).
    return len(text) >= 10 and len(have) >= 10 and have[:19].replace("T", " ") == text[:19].replace("T", " ")
