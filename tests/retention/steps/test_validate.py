"""validate's gate table (retention.steps.validate.gate_table), on the sandbox's real store: the run's retained
sfids are taken once into a working table that GX validates, which is unlogged and never analysed, and is dropped
afterwards whatever happens.

Why never analysed: GX checks uniqueness with ``sfid NOT IN (SELECT sfid ... GROUP BY sfid HAVING count(*) > 1)``.
Planned without statistics, Postgres hashes the grouping once; once autovacuum has analysed the table (which it does
within a minute of a large insert), it plans the grouping to spill and runs it again for every row, minutes at
800,000 rows (docs/benchmarks.md). The test checks the table's options, not a time."""

from __future__ import annotations

import pytest
from psycopg import sql

from retention.hooks.store import RetentionStoreHook
from retention.steps.validate import gate_table

NAME = "gate_check__20250101T000000"
STAGING = sql.Identifier("retention_staging", NAME)
# GX's query for ExpectColumnValuesToBeUnique over a table asset (great_expectations' column_values.unique).
UNIQUE = ("SELECT sum(CASE WHEN (sfid IS NOT NULL AND sfid NOT IN (SELECT sfid FROM {t} WHERE sfid IS NOT NULL "
          "GROUP BY sfid HAVING count(sfid) > 1)) THEN 0 ELSE 1 END) FROM {t}")


def test_the_gate_is_an_unlogged_table_autovacuum_leaves_alone_and_it_is_dropped_after(sandbox):
    store = RetentionStoreHook()
    with store.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(STAGING))
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT '003' || lpad(i::text, 12, '0') || 'AAA' AS sfid "
                             "FROM generate_series(1, 50000) i").format(STAGING))
    retained = sql.SQL("SELECT sfid FROM {} WHERE sfid <> '003000000000007AAA'").format(STAGING)
    try:
        with gate_table(store, NAME, retained, STAGING) as (batch, staged, retained_rows):
            assert (staged, retained_rows) == (50_000, 49_999)
            gate = sql.Identifier(*batch)
            with store.connect() as conn:
                persistence, options = conn.execute(
                    "SELECT relpersistence, reloptions FROM pg_class WHERE oid = %s::regclass",
                    (gate.as_string(conn),)).fetchone()
                assert persistence == "u" and options == ["autovacuum_enabled=false"]
                assert conn.execute(sql.SQL(UNIQUE).format(t=gate)).fetchone()[0] == 0
        with pytest.raises(RuntimeError), gate_table(store, NAME, retained, STAGING) as (batch, *_):
            raise RuntimeError("GX failed")
        with store.connect() as conn:
            assert conn.execute("SELECT to_regclass(%s)", (sql.Identifier(*batch).as_string(conn),)).fetchone() == (
                None,)
    finally:
        with store.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(STAGING))
