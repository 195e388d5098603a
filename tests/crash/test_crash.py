"""Real crashes: a policy's DAG run in its own process, SIGKILLed at each task boundary and inside the long steps
(inject/sitecustomize.py does the kill from outside the product), then retried as Airflow retries a task whose
worker died, or cleared and run again (child.py). After every kill: nothing was deleted or masked without its
retained copy in the cache; after the recovery: each eligible record retained exactly once and sent to
Salesforce exactly once, acted on, one ledger row for the DAG run saying so, the policy free again, no working
tables left. The ``chunk2_*`` points kill a run whose act and read-back are mapped over three chunks, in its second.

CI runs REDUCED; ``make crash-test`` (CRASH_MATRIX=full) runs every point for both policies."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.policy_support import policy_world, store_rows

HERE = Path(__file__).resolve().parent
# A day far enough ahead that records created now are past a one-day retention.
LOGICAL_DATE = dt.datetime(2031, 1, 1, 3, tzinfo=dt.UTC)
RECORDS = 12
PAGE_SIZE = 5  # Bulk query pages of 5: the 12 records reach staging in three COPYs

# Where the process dies (``module:function[@after][#nth call]``, see inject/sitecustomize.py).
POINTS = {
    # task boundaries: each task's step starts (its upstream tasks committed)
    "extract": "retention.steps.extract:extract",
    "subset": "retention.steps.load:subset",
    "load_to_cache": "retention.steps.load:load",
    "validate": "retention.steps.validate:validate",
    "delete_or_mask": "retention.steps.act:act",
    "confirm": "retention.steps.confirm:confirm",
    # inside the long steps
    "mid_copy": "psycopg:Copy.write#2",  # the first page staged, the second one's COPY open
    "job_created": "retention.hooks.salesforce_bulk:SalesforceBulk2Hook.create_ingest@after",  # not yet recorded
    "job_sent": "retention.hooks.salesforce_bulk:SalesforceBulk2Hook.upload_and_close@after",  # records sent
    "job_done": "retention.hooks.salesforce_bulk:SalesforceBulk2Hook.outcomes",  # complete, outcomes unrecorded
    "ledger_written": "retention.steps.confirm:write_ledger@after",  # before the working tables are dropped
    # the chunked path (CHUNK records a chunk: three delete_or_mask and verify_in_salesforce task instances)
    "chunk2_act": "retention.steps.act:act#2",  # the first chunk acted on, the second starting
    "chunk2_job_sent": "retention.hooks.salesforce_bulk:SalesforceBulk2Hook.upload_and_close@after#2",
    "chunk2_job_done": "retention.hooks.salesforce_bulk:SalesforceBulk2Hook.outcomes#2",
    "chunk2_verify": "retention.steps.verify:verify#2",  # every chunk acted on, one read back
}
CHUNK = 5  # guards.chunk_records of the chunked cases: chunks of 5, 5 and 2
# (action, point, recovery): "retry", Airflow retrying the task whose worker died; "clear", the DAG run cleared and
# run again from its first task (see child.py), which matters once Salesforce has changed.
CLEARED = ("job_created", "job_sent", "job_done", "ledger_written", "chunk2_job_sent", "chunk2_job_done")
FULL = [(action, point, "retry") for action in ("delete", "mask") for point in POINTS] + [
    (action, point, "clear") for action in ("delete", "mask") for point in CLEARED]
REDUCED = [("delete", "mid_copy", "retry"), ("mask", "job_sent", "retry"), ("delete", "job_done", "clear"),
           ("mask", "chunk2_job_sent", "clear")]
CASES = FULL if os.environ.get("CRASH_MATRIX") == "full" else REDUCED


@pytest.fixture(scope="module")
def crash_world(sandbox, airflow_db, tmp_path_factory):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    policies = tmp_path_factory.mktemp("crash-policies")
    with policy_world(sandbox):
        env = {**sandbox.env, **{k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")},
               "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"), "CRASH_POLICIES_DIR": str(policies),
               "CRASH_QUERY_PAGE_SIZE": str(PAGE_SIZE),
               "PYTHONPATH": os.pathsep.join([str(HERE / "inject"), str(REPO / "plugins"), str(REPO)])}
        yield env, policies, SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()


def policy_yaml(policy_id: str, action: str, last_name: str, chunk: int | None = None) -> str:
    # Only fields the sandbox's Connect mapping of Contact mirrors: confirm reads the masked values back there.
    mask = "mask:\n  FirstName: anonymize\n  Email: {strategy: hash}\n" if action == "mask" else ""
    guards = f"guards: {{chunk_records: {chunk}}}\n" if chunk else ""
    return f"""id: {policy_id}
description: crash harness
owner: crash-test
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: CreatedDate
  older_than_days: 1
  where: "LastName = '{last_name}'"
  exclude_privacy_holds: false
retain:
  table: {policy_id}
  fields: {{LastName: keep, FirstName: keep, Email: keep, Phone: keep}}
action: {action}
{mask}{guards}source: salesforce_api
"""


def attempt(env: dict, dag_id: str, mode: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**env, "CRASH_AT": crash_at} if crash_at else env
    return subprocess.run([sys.executable, "-m", "tests.crash.child", dag_id, LOGICAL_DATE.isoformat(), mode],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def sent_to_salesforce(sandbox, ids: list[str]) -> dict[str, list[bool]]:
    """Every delete or update the org received for these records (success or not), by record: a record sent twice
    shows twice, whatever Salesforce answered the second time."""
    out: dict[str, list[bool]] = {}
    with sandbox.org_conn() as conn:
        rows = conn.execute("SELECT rtrim(r.record_id), r.success FROM bulk.rows r JOIN bulk.jobs j ON j.id = r.job_id "
                            "WHERE j.kind = 'ingest' AND j.operation IN ('delete', 'hardDelete', 'update') "
                            "AND rtrim(r.record_id) = ANY(%s)", (ids,)).fetchall()
    for record_id, success in rows:
        out.setdefault(record_id, []).append(success)
    return out


def assert_nothing_acted_without_its_copy(sandbox, table: str, originals: dict[str, dict]) -> None:
    acted = {i for i, outcomes in sent_to_salesforce(sandbox, list(originals)).items() if any(outcomes)}
    cached = {r["sfid"]: r for r in store_rows(sandbox, f"SELECT * FROM cache.{table}")} if acted else {}
    assert acted <= set(cached), f"acted on without a retained copy: {sorted(acted - set(cached))}"
    for record_id in acted:
        assert {f: cached[record_id][f.lower()] for f in originals[record_id]} == originals[record_id]


@pytest.mark.parametrize(("action", "point", "recovery"), CASES, ids=["-".join(case) for case in CASES])
def test_a_kill_then_airflows_retry_retains_and_acts_on_each_record_exactly_once(crash_world, sandbox, action,
                                                                                    point, recovery):
    env, policies, sf = crash_world
    tag = uuid.uuid4().hex[:8]
    policy_id, last_name = f"crash_{action}_{point}_{tag}", f"Crash{tag}"
    dag_id = f"retention__{policy_id}"
    created = sf.bulk2.Contact.insert(records=[
        {"LastName": last_name, "FirstName": f"First{n}", "Email": f"p{n}.{tag}@example.org", "Phone": f"555-01{n:02d}"}
        for n in range(RECORDS)])
    with sandbox.org_conn() as conn:
        originals = {r[0]: {"LastName": r[1], "FirstName": r[2], "Email": r[3], "Phone": r[4]} for r in conn.execute(
            "SELECT id, lastname, firstname, email, phone FROM org.contact WHERE lastname = %s AND NOT isdeleted",
            (last_name,)).fetchall()}
    assert len(originals) == RECORDS, created
    chunked = point.startswith("chunk")
    (policies / f"{policy_id}.yaml").write_text(policy_yaml(policy_id, action, last_name, CHUNK if chunked else None))

    killed = attempt(env, dag_id, "first", POINTS[point])
    if killed.returncode != -signal.SIGKILL:  # the kill came at the point, not before or never
        pytest.fail(f"not killed ({killed.returncode}):\n{killed.stdout[-3000:]}\n{killed.stderr[-6000:]}")
    assert_nothing_acted_without_its_copy(sandbox, policy_id, originals)

    retried = attempt(env, dag_id, recovery)
    if retried.returncode != 0:
        pytest.fail(f"the retry failed ({retried.returncode}):\n{retried.stdout[-3000:]}\n{retried.stderr[-6000:]}")

    ids = sorted(originals)
    cache = {r["sfid"]: r for r in store_rows(sandbox, f"SELECT * FROM cache.{policy_id}")}
    assert sorted(cache) == ids  # retained exactly once (sfid is the key), and nothing else
    for record_id, values in originals.items():
        assert {f: cache[record_id][f.lower()] for f in values} == values
        assert cache[record_id]["_action_status"] == "done"
    assert sent_to_salesforce(sandbox, ids) == {i: [True] for i in ids}  # sent once each, and taken
    with sandbox.org_conn() as conn:
        org = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, isdeleted, firstname, email, phone FROM org.contact WHERE id = ANY(%s)", (ids,)).fetchall()}
    for record_id, (deleted, first, email, phone) in org.items():
        if action == "delete":
            assert deleted, record_id
        else:
            assert not deleted and first != originals[record_id]["FirstName"]
            assert phone == originals[record_id]["Phone"]  # not masked: the policy leaves it
            assert email != originals[record_id]["Email"]
    run_key = f"{policy_id}__{LOGICAL_DATE:%Y%m%dT%H%M%S}"
    (row,) = store_rows(sandbox, "SELECT status, acted, failed FROM retention.runs WHERE run_key = %s", (run_key,))
    assert row == {"status": "succeeded", "acted": RECORDS, "failed": 0}
    if chunked:  # the kill came in the second chunk (or its read-back): the first chunk's job is not sent again
        (jobs,) = store_rows(sandbox, "SELECT bulk_job_ids FROM retention.runs WHERE run_key = %s", (run_key,))
        assert len(jobs["bulk_job_ids"]) == len(set(jobs["bulk_job_ids"])) >= 2, jobs
    assert store_rows(sandbox, "SELECT * FROM retention.active_runs WHERE policy_id = %s", (policy_id,)) == []
    assert store_rows(sandbox, "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                      "'retention_staging' AND table_name LIKE %s", (run_key + "%",)) == []
