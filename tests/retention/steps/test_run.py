"""The run and its cutoff (retention.steps.run), and what the steps hand each other (retention.steps.results)."""

from __future__ import annotations

import datetime as dt

import pytest

from retention.policy import load_policy
from retention.steps.results import Acted, ChildStaged, ChildValidated, Extracted, Task, Validated, Verified
from retention.steps.run import RetentionError, guard, make_run
from tests.conftest import REPO

UTC = dt.UTC


def policy():
    return load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml")  # older_than_days: 730


def run_at(logical_date, **params):
    return make_run(policy(), logical_date=logical_date, run_after=dt.datetime(2030, 1, 1, tzinfo=UTC),
                    dag_run_id="r", params=params)


def test_cutoff_arithmetic():
    assert run_at(dt.datetime(2025, 3, 1, 3, 0, tzinfo=UTC)).cutoff == dt.datetime(2023, 3, 2, 3, 0, tzinfo=UTC)
    # Another zone is the same instant; a naive datetime is taken as UTC.
    paris = dt.datetime(2025, 3, 1, 4, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert run_at(paris).cutoff == dt.datetime(2023, 3, 2, 3, 0, tzinfo=UTC)
    assert run_at(paris).cutoff.tzinfo is UTC
    assert run_at(dt.datetime(2025, 3, 1, 3, 0)).cutoff == dt.datetime(2023, 3, 2, 3, 0, tzinfo=UTC)


def test_a_manual_run_takes_its_cutoff_from_run_after_and_the_cutoff_param_moves_the_anchor():
    manual = make_run(policy(), logical_date=None, run_after=dt.datetime(2026, 6, 1, 12, tzinfo=UTC),
                      dag_run_id="manual", params={})
    assert manual.cutoff == dt.datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert manual.run_key == "inactive_contacts__20260601T120000"
    forced = run_at(dt.datetime(2026, 6, 1, tzinfo=UTC), cutoff="2020-01-01")
    assert forced.cutoff == dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert forced.run_key == "inactive_contacts__20211231T000000"  # 2020-01-01 + 730 days
    with pytest.raises(RetentionError, match="param cutoff 'soon' is not an ISO date"):
        run_at(dt.datetime(2026, 6, 1, tzinfo=UTC), cutoff="soon")


def test_the_cutoff_as_soql_and_postgres_compare_it():
    run = run_at(dt.datetime(2026, 6, 1, 3, 4, 5, tzinfo=UTC))
    assert run.soql_cutoff("date") == "2024-06-01"
    assert run.soql_cutoff("datetime") == "2024-06-01T03:04:05Z"
    assert run.cutoff_value("date") == dt.date(2024, 6, 1)
    assert run.cutoff_value("datetime") == dt.datetime(2024, 6, 1, 3, 4, 5)  # naive UTC, as Connect stores it


def test_the_guard_stops_a_run_over_max_records_per_run():
    p = policy()
    guard(p, p.guards.max_records_per_run)
    with pytest.raises(RetentionError, match=rf"{p.guards.max_records_per_run + 1} records are eligible, more than "
                                             r"guards.max_records_per_run .*nothing was touched"):
        guard(p, p.guards.max_records_per_run + 1)


def test_results_travel_as_plain_json_and_come_back_typed():
    import json

    extracted = Extracted(run_key="k", cutoff="2024-06-01T00:00:00+00:00", eligible=3, held=1, done=0, staged=3,
                          held_ids=["003A"], field_types={"LastName": "string"}, date_type="datetime",
                          children=[ChildStaged("Contact", "contact", candidates=4, staged=3)],
                          blocked={"001A": "CASCADE_NOT_RETAINED: Case 500A"})
    wire = json.loads(json.dumps(extracted.to_xcom()))
    assert Extracted.from_xcom(wire) == extracted
    assert isinstance(Extracted.from_xcom(wire).children[0], ChildStaged)
    validated = Validated(message="ok", counts={"retained": 3}, salesforce_total=4,
                          children={"Contact": ChildValidated(counts={"retained": 3}, salesforce_candidates=4)})
    assert Validated.from_xcom(json.loads(json.dumps(validated.to_xcom()))) == validated
    assert Acted.from_xcom(Acted(bulk_job_ids=["750A"], done=2).to_xcom()).done == 2


def test_each_result_is_pulled_from_its_own_task():
    class TaskInstance:
        def __init__(self):
            self.asked = []

        def xcom_pull(self, task_ids, key="return_value", map_indexes=None):
            self.asked.append((task_ids, key, map_indexes))
            return None

    ti = TaskInstance()
    assert Extracted.pull(ti) is None and Validated.pull(ti) is None and Acted.pull(ti) is None
    # validate_row_counts returns the chunks the mapped tasks expand over; its result travels as `validated`.
    assert ti.asked == [(Task.EXTRACT, "return_value", None), (Task.VALIDATE, "validated", None),
                        (Task.ACT, "return_value", None)]
    assert [t for t, _, _ in ti.asked] == ["extract", "validate_row_counts", "delete_or_mask"]
    ti.asked.clear()
    assert Acted.pull_chunks(ti) == [] and Verified.pull_chunks(ti, 1) == []
    assert ti.asked == [("delete_or_mask", "return_value", None), ("verify_in_salesforce", "return_value", 1)]
    # (Airflow's default map_indexes returns every map index's value; an explicit None would mean the unmapped -1.)


def test_the_run_s_act_is_the_sum_of_its_chunks():
    one = Acted(bulk_job_ids=["750A"], done=2, refused=1, held_at_action=["003B"], operation_used="hardDelete")
    two = Acted(bulk_job_ids=["750C", "750D"], done=5, failed=1, held_at_action=["003A"], operation_used="delete",
                hard_delete_fallback=True)
    merged = Acted.merged([one, two])
    assert merged == Acted(bulk_job_ids=["750A", "750C", "750D"], done=7, refused=1, failed=1,
                           held_at_action=["003A", "003B"], operation_used="delete,hardDelete",
                           hard_delete_fallback=True)


def test_one_run_of_a_policy_at_work_at_a_time(sandbox, airflow_db):
    """``claim`` against the real store: a second DAG run of the policy waits while the first one's DAG run is
    running and fails, naming it, when its wait runs out; a retry of the holder keeps its claim; once the holder's
    DAG run has ended (Airflow says so) or released its claim, the next run takes it."""
    from retention.hooks.store import RetentionStoreHook
    from retention.steps.run import PolicyBusy, claim, release

    store = RetentionStoreHook()
    store.check_setup()
    checked = policy().model_copy(update={"id": "lock_check"})

    def run_of(day: int):
        when = dt.datetime(2026, 6, day, tzinfo=UTC)
        return make_run(checked, logical_date=when, run_after=when, dag_run_id=f"backfill__2026-06-0{day}", params={})

    first, second = run_of(1), run_of(2)
    running = {"backfill__2026-06-01"}
    asked: list[str] = []

    def still_running(dag_run_id):
        asked.append(dag_run_id)
        return dag_run_id in running

    def holder():
        with store.connect() as conn:
            row = conn.execute("SELECT dag_run_id FROM retention.active_runs WHERE policy_id = 'lock_check'").fetchone()
        return row and row[0]

    release(store, first), release(store, second)
    claim(store, first, still_running=still_running)
    claim(store, first, still_running=still_running)  # a retry of the same DAG run
    assert holder() == "backfill__2026-06-01"
    with pytest.raises(PolicyBusy, match=r"policy lock_check is being run by DAG run backfill__2026-06-01 "
                                         r"\(lock_check__20260601T000000, since .*\); backfill__2026-06-02 waited 1s"):
        claim(store, second, still_running=still_running, wait=1, poll=0.2)
    assert set(asked) == {"backfill__2026-06-01"} and len(asked) >= 2  # it asked again while waiting
    running.clear()  # the first DAG run failed (its validation, say): it no longer holds the policy
    claim(store, second, still_running=still_running, wait=1, poll=0.2)
    assert holder() == "backfill__2026-06-02"
    release(store, second)
    assert holder() is None
