"""verify's read-back (retention.steps.verify) on the sandbox: the live records of an Id range come back through
one Bulk 2.0 query job into the store, exactly as the org sent them."""

from __future__ import annotations

import pytest


def test_a_nul_read_back_stops_the_step_naming_record_and_field(sandbox, sf):
    """A value read back with a NUL (the ``nul_in_results`` fault: Postgres text cannot hold one) cannot be the value
    sent: the step stops naming the record and the field, rather than strip it or fail on an anonymous byte."""
    from psycopg import sql

    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook
    from retention.steps.run import RetentionError
    from retention.steps.verify import DONE, read_back

    record = sf.Contact.create({"LastName": "Read back NUL"})["id"]
    with sandbox.fault("nul_in_results", text="NUL"), RetentionStoreHook().connect() as conn:
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {}::text AS sfid").format(
            DONE, sql.Literal(record)))
        expected = (f"^Contact record {record} was read back from Salesforce with a NUL character in LastName: not the "
                    "value sent; its retained row is kept$")
        with pytest.raises(RetentionError, match=expected):
            read_back(conn, SalesforceBulk2Hook(), "Contact", ["LastName"], 100)
