"""The ledger is tamper-evident: ``python -m retention evidence verify`` passes on an untouched ledger and
names the first broken row after an edit or a removal; ``export`` writes an auditor's JSON and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

POLICY_ID = "evidence_check"


@pytest.fixture(scope="module")
def ledger_rows(sandbox, airflow_db):
    """Three ledger rows written by the confirm step's own write_ledger, for a policy id of this module."""
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import load_policy
    from retention.steps.confirm import write_ledger
    from retention.steps.run import make_run

    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml").model_copy(update={"id": POLICY_ID})
    store = RetentionStoreHook()
    store.check_setup()
    ids = []
    for day in (1, 2, 3):
        run = make_run(policy, logical_date=dt.datetime(2026, 6, day, 3, tzinfo=dt.UTC),
                       run_after=dt.datetime(2026, 6, day, 3, tzinfo=dt.UTC),
                       dag_run_id=f"scheduled__2026-06-0{day}", params={})
        ids.append(write_ledger(
            store, policy, run, counts={"eligible": 10 * day, "held": 1, "staged": 10 * day, "retained": 10 * day,
                                        "acted": 10 * day, "failed": 0, "salesforce": 10 * day},
            bulk_job_ids=[f"750Dn00000000{day}"], holds_applied=["003Dn0000000001IAA"], validation={"ok": True},
            status="succeeded", message=f"day {day}", timings={}))
    yield ids


def cli(sandbox, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "RETENTION_STORE_URL": sandbox.env["RETENTION_STORE_URL"]}
    return subprocess.run([sys.executable, "-m", "retention", "evidence", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_verify_passes_on_an_untouched_ledger(sandbox, ledger_rows):
    out = cli(sandbox, "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ledger intact:")


def test_an_edited_row_is_named(sandbox, ledger_rows):
    middle = ledger_rows[1]
    with sandbox.store_conn() as conn:
        conn.execute("UPDATE retention.runs SET acted = acted - 1 WHERE id = %s", (middle,))
        try:
            out = cli(sandbox, "verify")
        finally:
            conn.execute("UPDATE retention.runs SET acted = acted + 1 WHERE id = %s", (middle,))
    assert out.returncode == 1
    assert f"ledger broken at row {middle}" in out.stdout and "changed after it was written" in out.stdout
    assert cli(sandbox, "verify").returncode == 0  # restored exactly: the chain holds again


def test_a_removed_row_breaks_the_link_of_the_next_one(sandbox, ledger_rows):
    first, middle, last = ledger_rows
    with sandbox.store_conn() as conn:
        saved = conn.execute("SELECT * FROM retention.runs WHERE id = %s", (middle,))
        cols = [d.name for d in saved.description]
        row = saved.fetchone()
        conn.execute("DELETE FROM retention.runs WHERE id = %s", (middle,))
        try:
            out = cli(sandbox, "verify")
        finally:
            from psycopg.types.json import Jsonb

            values = [Jsonb(v) if isinstance(v, (list, dict)) else v for v in row]
            conn.execute(f"INSERT INTO retention.runs ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                         values)
    assert out.returncode == 1
    assert f"ledger broken at row {last}" in out.stdout and "does not link" in out.stdout
    assert cli(sandbox, "verify").returncode == 0


def test_rows_removed_from_the_end_are_caught_with_the_head_noted_earlier(sandbox, ledger_rows):
    noted = cli(sandbox, "verify")
    head = noted.stdout.split("head ", 1)[1].split()[0]
    with sandbox.store_conn() as conn:
        assert conn.execute("SELECT row_hash FROM retention.runs ORDER BY id DESC LIMIT 1").fetchone()[0] == head
        saved = conn.execute("SELECT * FROM retention.runs ORDER BY id DESC LIMIT 1")
        cols = [d.name for d in saved.description]
        row = saved.fetchone()
        conn.execute("DELETE FROM retention.runs WHERE id = %s", (row[cols.index("id")],))
        try:
            plain = cli(sandbox, "verify")
            anchored = cli(sandbox, "verify", "--head", head)
        finally:
            from psycopg.types.json import Jsonb

            values = [Jsonb(v) if isinstance(v, (list, dict)) else v for v in row]
            conn.execute(f"INSERT INTO retention.runs ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                         values)
    assert plain.returncode == 0  # the chain alone still holds: the newest row left no successor to break
    assert anchored.returncode == 1
    assert f"the row with hash {head} (an earlier head) is not in the ledger" in anchored.stdout
    assert cli(sandbox, "verify", "--head", head).returncode == 0


def test_export_writes_json_and_csv_for_an_auditor(sandbox, ledger_rows, tmp_path):
    out = cli(sandbox, "export", "--policy", POLICY_ID, "--since", "2026-01-01", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / f"evidence_{POLICY_ID}_2026-01-01.json").read_text())
    assert report["ledger_verification"]["ok"] is True
    runs = report["runs"]
    assert [r["id"] for r in runs if r["id"] in ledger_rows] == ledger_rows
    day2 = next(r for r in runs if r["id"] == ledger_rows[1])
    assert day2["eligible"] == day2["acted"] == 20 and day2["bulk_job_ids"] == ["750Dn000000002"]
    assert day2["holds_applied"] == ["003Dn0000000001IAA"] and day2["status"] == "succeeded"
    assert day2["policy_hash"] and len(day2["row_hash"]) == 64
    assert day2["cutoff"].startswith("2024-06-02")  # 730 days before the run's logical date
    with open(tmp_path / f"evidence_{POLICY_ID}_2026-01-01.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs) and rows[1]["acted"] == "20"
