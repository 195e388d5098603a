"""The validation gate against a real Postgres: it passes only when every count and key check agrees.

GX is slow to import and each run opens a datasource, so each case is one GX run with all its
assertions grouped.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg
import pytest

from retention.validation import RowCounts, ValidationResult, format_counts, run_query, validate_retained
from sandbox import postgres

RUN = "inactive_contacts__20250601T030000"
OTHER_RUN = "inactive_contacts__20250501T030000"
DUP_RUN = "inactive_contacts__20250602T030000"
NULL_RUN = "inactive_contacts__20250603T030000"
LABEL = "2025-06-01T03:00:00+00:00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    """An embedded Postgres with ``cache.contact`` holding rows of several runs (some deliberately bad)."""
    folder = tmp_path_factory.mktemp("pg-validation")
    pg = postgres.start(folder, _free_port())
    try:
        postgres.ensure_databases(pg, ("retention_store",))
        url = pg.url("retention_store")
        rows = ([(f"003A{i:011d}", RUN) for i in range(3)]
                + [(f"003B{i:011d}", OTHER_RUN) for i in range(5)]
                + [("003C00000000001", DUP_RUN), ("003C00000000001", DUP_RUN), ("003C00000000002", DUP_RUN)]
                + [("003D00000000001", NULL_RUN), (None, NULL_RUN)])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS cache")
            # No primary key on purpose: the gate must catch what a broken load could leave behind.
            conn.execute("CREATE TABLE cache.contact (sfid varchar(18), last_name text, retention_run text)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO cache.contact (sfid, last_name, retention_run) VALUES (%s, 'X', %s)", rows)
        yield url
    finally:
        postgres.stop(folder)


def _validate(store_url: str, counts: RowCounts, run_value: str = RUN, **kwargs) -> ValidationResult:
    result = validate_retained(store_url, schema="cache", table="contact", run_column="retention_run",
                               run_value=run_value, counts=counts, policy_id="inactive_contacts", run_label=LABEL,
                               **kwargs)
    json.dumps(result.details)  # must go to XCom and the ledger as is
    return result


def test_matching_counts_pass_and_other_runs_are_not_counted(store_url):
    result = _validate(store_url, RowCounts(eligible=3, staged=3, retained=3, salesforce=3))
    assert result.success, result.message
    assert result.message == (f"validation passed for policy inactive_contacts run {LABEL}: eligible 3, staged 3, "
                              "retained 3, salesforce 3; sfid unique: yes; sfid not null: yes")
    # The table holds 13 rows; only this run's 3 are in the batch.
    assert result.details["counts"]["store"] == 3
    assert result.details["gx"]["success"] is True
    assert {e["expectation_type"] for e in result.details["gx"]["expectations"]} == {
        "expect_table_row_count_to_equal", "expect_column_values_to_be_unique", "expect_column_values_to_not_be_null"}
    assert "data_docs" not in result.details
    # GX never disposes Postgres engines itself: the gate must not leave pooled connections behind.
    with psycopg.connect(store_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchone()[0] == 0


def test_missing_row_fails_with_the_numbers(store_url):
    result = _validate(store_url, RowCounts(eligible=4, staged=4, retained=3, salesforce=4))
    assert not result.success
    assert result.message == (f"validation failed for policy inactive_contacts run {LABEL}: eligible 4, staged 4, "
                              "retained 3 (expected 4), salesforce 4; sfid unique: yes; sfid not null: yes")
    assert result.details["count_mismatches"] == ["retained 3 != eligible 4"]
    row_count = next(e for e in result.details["gx"]["expectations"]
                     if e["expectation_type"] == "expect_table_row_count_to_equal")
    assert row_count["success"] is False and row_count["observed_value"] == 3 and row_count["kwargs"]["value"] == 4


def test_store_short_of_reported_counts_fails_in_gx(store_url):
    """Steps may all report 4, yet the store holds 3: GX's own count catches it."""
    result = _validate(store_url, RowCounts(eligible=4, staged=4, retained=4, salesforce=None))
    assert not result.success
    assert result.details["count_mismatches"] == []
    assert "retained 4 (store has 3), salesforce not checked" in result.message


def test_duplicate_sfid_fails(store_url):
    result = _validate(store_url, RowCounts(eligible=3, staged=3, retained=3, salesforce=3), run_value=DUP_RUN)
    assert not result.success
    assert result.message.endswith("sfid unique: no; sfid not null: yes"), result.message


def test_null_sfid_fails(store_url):
    result = _validate(store_url, RowCounts(eligible=2, staged=2, retained=2, salesforce=2), run_value=NULL_RUN)
    assert not result.success
    assert result.message.endswith("sfid not null: no"), result.message


def test_salesforce_disagreement_fails(store_url):
    result = _validate(store_url, RowCounts(eligible=3, staged=3, retained=3, salesforce=5))
    assert not result.success
    assert result.details["gx"]["success"] is True  # the store is fine; the org disagrees
    assert "salesforce 5 (expected 3)" in result.message
    assert result.details["count_mismatches"] == ["salesforce 5 != eligible 3"]


@pytest.mark.parametrize("bad", ["x' OR '1'='1", f"{RUN}'; DROP TABLE cache.contact; --", "", RUN.upper(),
                                 f"{RUN}\n"])
def test_malicious_run_value_is_rejected(bad):
    with pytest.raises(ValueError, match="refusing run value"):
        _validate("postgresql://nobody@127.0.0.1:1/none", RowCounts(1, 1, 1, None), run_value=bad)


def test_query_quotes_identifiers_and_value():
    assert run_query(schema="cache", table="contact", run_column="retention_run", run_value=RUN) == (
        f"SELECT * FROM \"cache\".\"contact\" WHERE \"retention_run\" = '{RUN}'")
    with pytest.raises(ValueError, match="identifier"):
        run_query(schema="cache", table="contact; --", run_column="retention_run", run_value=RUN)


def test_format_counts():
    assert format_counts(RowCounts(10, 10, 9, None)) == (
        "eligible 10, staged 10, retained 9 (expected 10), salesforce not checked")


def test_docs_dir_writes_data_docs(store_url, tmp_path):
    """Re-running into the same folder (a task retry) works; the store URL is never written there."""
    docs = tmp_path / "gx"
    url = store_url.replace("postgres@", "postgres:not-a-real-secret@")  # the server trusts local users
    for _ in range(2):
        result = _validate(url, RowCounts(eligible=3, staged=3, retained=3, salesforce=3), docs_dir=docs)
        assert result.success, result.message
    index = Path(result.details["data_docs"])
    assert index.name == "index.html" and index.is_file() and index.is_relative_to(docs)
    assert RUN in index.read_text()  # each retention run is listed by its run key
    assert not [p for p in docs.rglob("*") if p.is_file() and b"not-a-real-secret" in p.read_bytes()]


def test_a_failed_gate_names_the_offending_values_in_its_data_docs_and_a_passed_one_is_checked_once(store_url,
                                                                                                   tmp_path):
    """GX's first pass gives the verdict with its counts and lists no values (on a million rows a list costs as
    much again as the verdict); only a failure runs the suite again for up to 20 offending values, so the owner
    sees which sfid is duplicated."""
    failed = tmp_path / "failed"
    result = _validate(store_url, RowCounts(eligible=3, staged=3, retained=3, salesforce=3), run_value=DUP_RUN,
                       docs_dir=failed)
    assert not result.success
    pages = [p.read_text() for p in failed.rglob("data_docs/local_site/validations/**/*.html")]
    assert len(pages) == 2 and sum("003C00000000001" in page for page in pages) == 1
    passed = tmp_path / "passed"
    assert _validate(store_url, RowCounts(eligible=3, staged=3, retained=3, salesforce=3), docs_dir=passed).success
    assert len(list(passed.rglob("data_docs/local_site/validations/**/*.html"))) == 1
