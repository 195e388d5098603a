"""What a run decides, proven in real DAG runs (``dag.test()``) through both sources:

- relative dates in ``where`` (``LAST_N_DAYS:n``, ``TODAY``) count from the UTC day of the run's logical date, in
  the SOQL sent to Salesforce and in the SQL over the Connect mirror alike, so a run 200 days in the past (a
  backfill) selects what that day would have selected, and the org's count agrees with the mirror's;
- ``guards.max_records_per_run``: a run over it fails in extract, naming the guard, with nothing retained, acted
  on or written to the ledger;
- the org changing between extract and validation (a record created, deleted or edited out of the selection)
  fails validation, with nothing deleted or masked;
- confirm_and_report: a record reported done that the org still shows fails the run, its copy kept; a mirror that
  has not caught up is retried until it has; a retry after the ledger row was written adds no second row, while a
  new DAG run of the same date appends its own;
- Salesforce's session expiring or its rate limit answering during validation or the act step: the run
  recovers (a new login, or Airflow's retry) and every record is acted on exactly once;
- a privacy hold placed after extract (while the run loads its copy) keeps its record untouched: the act step asks
  the org again, marks it ``held``, and the ledger counts it and names it in ``holds_applied``; a held lead stays
  unmasked, and a later run of the mask policy never overwrites the retained originals with masked values.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.policy_support import cache_rows, org_rows, place_hold, policy_world, store_rows

UTC = dt.UTC
# 200 days ago: the org's clock at query time is far from the run's day.
LOGICAL_DATE = dt.datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=200)


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    with policy_world(sandbox):
        yield sandbox


def run_policy(policy_id: str, logical_date: dt.datetime = LOGICAL_DATE):
    from tests.dags import decision_dags

    dag = getattr(decision_dags, f"retention__{policy_id}")
    run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def contacts(sandbox, sf, title: str, dates: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Contacts named ``title`` + name, each (created, last modified) the given days before LOGICAL_DATE. The API cannot
    set those audit fields; the org's database can. SystemModstamp is now, so Heroku Connect picks them up."""
    ids = {name: sf.Contact.create({"LastName": f"{title} {name}", "Email": f"{name}@decisions.example"})["id"]
           for name in dates}
    with sandbox.org_conn() as conn:
        for name, (created, modified) in dates.items():
            conn.execute("UPDATE org.contact SET createddate = %s, lastmodifieddate = %s, systemmodstamp = now() "
                         "WHERE id = %s", (LOGICAL_DATE - dt.timedelta(days=created),
                                           LOGICAL_DATE - dt.timedelta(days=modified), ids[name]))
    return ids


def ledger(sandbox, policy_id: str) -> list[dict]:
    return store_rows(sandbox, "SELECT * FROM retention.runs WHERE policy_id = %s ORDER BY id", (policy_id,))


def live(sandbox, ids) -> set[str]:
    return {r["id"] for r in org_rows(sandbox, "SELECT id FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted",
                                      (list(ids),))}


@pytest.mark.parametrize(("policy_id", "title"), [("relative_mirror", "Relative mirror"),
                                                  ("relative_bulk", "Relative bulk")])
def test_relative_dates_count_from_the_runs_logical_date(world, sf, policy_id, title):
    """``CreatedDate = LAST_N_DAYS:100`` on a run 200 days ago: created 50 days before it is in; created 120 days
    before is out (it would be in counted from the cutoff, 30 days earlier); created 10 days before the run's day
    and modified 40 days before is in. Counted from today (the org's clock) none would be, and validation, which
    compares the source's count with the org's, would fail."""
    ids = contacts(world, sf, title, {"in_50": (50, 40), "out_120": (120, 40), "in_45": (45, 35)})
    run, states = run_policy(policy_id)
    assert run.state == "success", states
    [row] = ledger(world, policy_id)
    assert (row["eligible"], row["acted"], row["salesforce_count"]) == (2, 2, 2)
    assert set(cache_rows(world, policy_id)) == {ids["in_50"], ids["in_45"]}
    assert live(world, ids.values()) == {ids["out_120"]}


@pytest.mark.parametrize(("policy_id", "title"), [("guarded_mirror", "Guarded mirror"),
                                                  ("guarded_bulk", "Guarded bulk")])
def test_a_run_over_max_records_per_run_fails_before_touching_anything(world, sf, capfd, policy_id, title):
    ids = contacts(world, sf, title, {f"guarded_{n}": (60, 40) for n in range(3)})
    run, states = run_policy(policy_id)
    assert run.state == "failed" and states["extract"] == "failed", states
    assert {s for t, s in states.items() if t not in ("extract", "wait_for_connect_sync")} == {"upstream_failed"}
    assert "3 records are eligible, more than guards.max_records_per_run (2); nothing was touched" in \
        capfd.readouterr().out
    with world.store_conn() as conn:  # extract's transaction rolled back: not even the cache table was made
        assert conn.execute("SELECT to_regclass(%s)", (f"cache.{policy_id}",)).fetchone()[0] is None
    assert live(world, ids.values()) == set(ids.values())
    assert ledger(world, policy_id) == []
    with world.store_conn() as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'retention_staging' AND tablename "
                            "LIKE %s", (f"{policy_id}%",)).fetchone()[0] == 0


@pytest.mark.parametrize(("policy_id", "title"), [("budget_mirror", "Budget mirror"), ("budget_bulk", "Budget bulk")])
def test_a_run_over_its_share_of_the_org_s_api_allowance_touches_nothing(world, sf, capfd, policy_id, title):
    """The org has 100 API requests left today (its /limits); a run needs about 40, more than the default share
    ([retention] max_api_share, 0.1) of them: it fails in extract, naming the allowance and the share, and
    nothing is staged, retained, acted on or in the ledger."""
    ids = contacts(world, sf, title, {f"budget_{n}": (60, 40) for n in range(3)})
    with world.org_settings(limits={"DailyApiRequests": {"Max": 15000, "Remaining": 100}}):
        run, states = run_policy(policy_id)
    assert run.state == "failed" and states["extract"] == "failed", states
    assert {s for t, s in states.items() if t not in ("extract", "wait_for_connect_sync")} == {"upstream_failed"}
    out = capfd.readouterr().out
    assert "DailyApiRequests left today: more than the 0.1 share [retention] max_api_share allows; nothing was " \
           "touched" in out, out[-3000:]
    assert live(world, ids.values()) == set(ids.values())
    assert ledger(world, policy_id) == []
    with world.store_conn() as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"cache.{policy_id}",)).fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'retention_staging' AND tablename "
                            "LIKE %s", (f"{policy_id}%",)).fetchone()[0] == 0


def test_a_policy_s_own_api_share_lets_its_run_spend_more(world, sf):
    """The same 100 requests left: a policy whose guards.max_api_share is 1.0 may spend them all, and its run does,
    within what it estimated."""
    ids = contacts(world, sf, "Budget generous", {f"generous_{n}": (60, 40) for n in range(3)})
    with world.org_settings(limits={"DailyApiRequests": {"Max": 15000, "Remaining": 100}}):
        run, states = run_policy("budget_generous")
    assert run.state == "success", states
    assert live(world, ids.values()) == set()
    assert [r["acted"] for r in ledger(world, "budget_generous")] == [3]


def hold_after_load(monkeypatch, sf, record_id: str) -> None:
    """A privacy officer places a hold on ``record_id`` while the run loads its retained copy (after extract)."""
    from retention.steps import load

    real_load = load.load

    def load_then_hold(store, policy, run):
        rows = real_load(store, policy, run)
        place_hold(sf, record_id, name=f"Hold on {record_id} during a run")
        return rows

    monkeypatch.setattr(load, "load", load_then_hold)


def test_a_hold_placed_during_a_run_keeps_its_contact(world, sf, monkeypatch):
    ids = contacts(world, sf, "Held contacts", {"kept": (60, 40), "gone": (60, 40)})
    hold_after_load(monkeypatch, sf, ids["kept"])
    run, states = run_policy("held_contacts")
    assert run.state == "success", states
    rows = cache_rows(world, "held_contacts")
    assert {k: v["_action_status"] for k, v in rows.items()} == {ids["kept"]: "held", ids["gone"]: "done"}
    assert live(world, ids.values()) == {ids["kept"]}
    [row] = ledger(world, "held_contacts")
    assert (row["eligible"], row["acted"], row["held"], row["holds_applied"]) == (2, 1, 1, [ids["kept"]])


def leads(sandbox, sf, names: list[str]) -> dict[str, str]:
    """Leads of held_leads_mask (Company 'Held mask Co'), created 400 days before LOGICAL_DATE."""
    ids = {name: sf.Lead.create({"FirstName": "Ada", "LastName": name, "Company": "Held mask Co",
                                 "Email": f"{name}@original.example", "Phone": "+1 555 0100",
                                 "Country": "France"})["id"] for name in names}
    with sandbox.org_conn() as conn:
        conn.execute("UPDATE org.lead SET createddate = %s, systemmodstamp = now() WHERE id = ANY(%s)",
                     (LOGICAL_DATE - dt.timedelta(days=400), list(ids.values())))
    return ids


def test_a_held_lead_stays_unmasked_and_a_rerun_keeps_the_retained_originals(world, sf, monkeypatch):
    ids = leads(world, sf, ["Heldlead", "Maskedlead"])
    hold_after_load(monkeypatch, sf, ids["Heldlead"])
    run, states = run_policy("held_leads_mask")
    assert run.state == "success", states
    org = {r["id"]: r for r in org_rows(world, "SELECT id, firstname, lastname, email, phone FROM org.lead WHERE "
                                               "id = ANY(%s)", (list(ids.values()),))}
    assert (org[ids["Heldlead"]]["lastname"], org[ids["Heldlead"]]["email"], org[ids["Heldlead"]]["phone"]) == (
        "Heldlead", "Heldlead@original.example", "+1 555 0100")  # untouched
    masked = org[ids["Maskedlead"]]
    assert masked["lastname"] != "Maskedlead" and masked["email"] != "Maskedlead@original.example"
    assert masked["phone"] is None
    [row] = ledger(world, "held_leads_mask")
    assert (row["acted"], row["held"], row["holds_applied"]) == (1, 1, [ids["Heldlead"]])
    before = cache_rows(world, "held_lead")
    assert before[ids["Maskedlead"]]["email"] == "original.example" and before[ids["Maskedlead"]][
        "_action_status"] == "done"

    monkeypatch.undo()
    run, states = run_policy("held_leads_mask", LOGICAL_DATE + dt.timedelta(days=7))
    assert run.state == "success", states
    after = cache_rows(world, "held_lead")
    # The masked lead still matches the policy (its Company is kept) but is settled: its retained row is the original.
    assert after[ids["Maskedlead"]] == before[ids["Maskedlead"]]
    assert after[ids["Heldlead"]]["_action_status"] == "held"  # still under its hold: held again, not masked
    assert org_rows(world, "SELECT lastname FROM org.lead WHERE id = %s", (ids["Heldlead"],)) == [
        {"lastname": "Heldlead"}]
    second = ledger(world, "held_leads_mask")[-1]
    assert (second["acted"], second["held"]) == (0, 1)


@pytest.mark.parametrize("change", ["created", "deleted", "edited"])
def test_the_org_changing_between_extract_and_validation_stops_the_run(world, sf, monkeypatch, change):
    """Not staged rows lost in the store: the org itself disagrees with what extract staged, so the count the
    validation asks of the org differs from the eligible count, and nothing is acted on."""
    from retention.steps import load

    ids = contacts(world, sf, "Changing contacts", {f"{change}_a": (60, 40), f"{change}_b": (60, 40)})
    real_load = load.load

    def load_then_change(store, policy, run):
        rows = real_load(store, policy, run)
        if change == "created":  # an eligible contact the run did not stage
            contacts(world, sf, "Changing contacts", {f"{change}_late": (60, 40)})
        elif change == "deleted":
            sf.Contact.delete(ids[f"{change}_a"])
        else:  # edited today: no longer past the cutoff
            sf.Contact.update(ids[f"{change}_a"], {"Email": "edited@decisions.example"})
        return rows

    monkeypatch.setattr(load, "load", load_then_change)
    before = org_rows(world, "SELECT id, isdeleted, systemmodstamp FROM org.contact WHERE lastname LIKE "
                             "'Changing contacts %%' AND id != %s ORDER BY id", (ids[f"{change}_a"],))
    run, states = run_policy("changing_contacts")
    assert run.state == "failed" and states["validate_row_counts"] == "failed", states
    assert states["delete_or_mask"] == states["confirm_and_report"] == "upstream_failed"
    # The store agrees with itself (every staged record retained, pending): what failed is the org's own count.
    run_key = f"changing_contacts__{LOGICAL_DATE:%Y%m%dT%H%M%S}"
    with world.store_conn() as conn:
        staged = {r[0] for r in conn.execute(f'SELECT sfid FROM retention_staging."{run_key}"').fetchall()}
        conn.execute(f'DROP TABLE retention_staging."{run_key}"')  # kept for inspection after a failed validation
    assert {ids[f"{change}_a"], ids[f"{change}_b"]} <= staged
    retained = cache_rows(world, "changing_contacts")
    assert {retained[k]["_retention_run"] for k in staged} == {run_key}
    assert org_rows(world, "SELECT id, isdeleted, systemmodstamp FROM org.contact WHERE lastname LIKE "
                           "'Changing contacts %%' AND id != %s AND id = ANY(%s) ORDER BY id",
                    (ids[f"{change}_a"], [r["id"] for r in before])) == before
    assert ledger(world, "changing_contacts") == []
    assert {r["_action_status"] for r in cache_rows(world, "changing_contacts").values()} == {"pending"}


def test_a_record_reported_done_but_still_in_the_org_fails_the_run_and_keeps_its_copy(world, sf, monkeypatch):
    from retention.steps import act

    ids = contacts(world, sf, "Confirmed contacts", {"back": (60, 40), "gone": (60, 40)})
    real = act.record_outcomes

    def outcomes_then_undeleted(store, policy, run, job_id, outcomes, **kwargs):
        counts = real(store, policy, run, job_id, outcomes, **kwargs)
        with world.org_conn() as conn:  # the job said success, yet the org shows the record
            conn.execute("UPDATE org.contact SET isdeleted = false WHERE id = %s", (ids["back"],))
        return counts

    monkeypatch.setattr(act, "record_outcomes", outcomes_then_undeleted)
    run, states = run_policy("confirmed_contacts")
    assert run.state == "failed" and states["confirm_and_report"] == "failed", states
    assert ledger(world, "confirmed_contacts") == []
    rows = cache_rows(world, "confirmed_contacts")
    assert set(rows) == set(ids.values())  # both copies kept
    assert live(world, ids.values()) == {ids["back"]}
    with world.store_conn() as conn:  # the run's working tables stay for the next attempt
        run_key = f"confirmed_contacts__{LOGICAL_DATE:%Y%m%dT%H%M%S}"
        assert conn.execute("SELECT to_regclass(%s)", (f'retention_staging."{run_key}"',)).fetchone()[0]


def run_with_connect_paused_at_act(world, monkeypatch, policy_id: str, *, resume_after: float | None = None):
    """Run ``policy_id`` with Heroku Connect paused as the act step starts, resumed ``resume_after`` seconds later
    (None: only once the run is over); returns the run, its task states and when Connect resumed."""
    import threading

    from retention.steps import act
    from tests.conftest import ConnectApi

    connect, real, resumed = ConnectApi(world), act.act, []

    def resume():
        resumed.append(dt.datetime.now(UTC))
        connect.resume()

    def act_then_pause(*args, **kwargs):
        connect.pause()
        if resume_after is not None:
            threading.Timer(resume_after, resume).start()
        return real(*args, **kwargs)

    monkeypatch.setattr(act, "act", act_then_pause)
    try:
        run, states = run_policy(policy_id)
    finally:
        connect.resume()
    return run, states, resumed


def test_a_mirror_behind_is_retried_until_it_shows_the_deletes(world, sf, monkeypatch):
    """Connect paused right after the deletes: confirm_and_report's first attempt writes the one ledger row from the
    org's confirmation, times out on the mirror and is retried (Airflow's retries) until Connect has resumed."""
    ids = contacts(world, sf, "Mirrored contacts", {"m1": (60, 40), "m2": (60, 40)})
    # Resumed after the first attempt's 4 s wait has run out.
    run, states, resumed = run_with_connect_paused_at_act(world, monkeypatch, "mirrored_contacts", resume_after=8)
    assert run.state == "success", states
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    assert tries["confirm_and_report"] >= 2 and tries["delete_or_mask"] == 1, tries
    [row] = ledger(world, "mirrored_contacts")
    assert (row["acted"], row["status"]) == (2, "succeeded")
    assert row["finished_at"] < resumed[0]  # the evidence did not wait for Connect
    assert live(world, ids.values()) == set()


def test_a_mirror_that_never_catches_up_fails_the_run_with_the_deletes_in_the_ledger(world, sf, monkeypatch):
    """Connect stays paused through every attempt: the run fails (an alert), yet the deletes Salesforce confirmed are
    in the ledger, each record's copy is kept, and the working tables stay for confirm_and_report to be cleared once
    Connect is back."""
    ids = contacts(world, sf, "Lagging contacts", {"l1": (60, 40), "l2": (60, 40)})
    run, states, _ = run_with_connect_paused_at_act(world, monkeypatch, "lagging_contacts")
    assert run.state == "failed" and states["confirm_and_report"] == "failed", states
    assert {ti.task_id: ti.try_number for ti in run.get_task_instances()}["confirm_and_report"] == 3
    [row] = ledger(world, "lagging_contacts")
    assert (row["acted"], row["status"], row["dag_run_id"]) == (2, "succeeded", run.run_id)
    assert live(world, ids.values()) == set()
    assert {r["_action_status"] for r in cache_rows(world, "lagging_contacts").values()} == {"done"}
    with world.store_conn() as conn:
        run_key = f"lagging_contacts__{LOGICAL_DATE:%Y%m%dT%H%M%S}"
        assert conn.execute("SELECT to_regclass(%s)", (f'retention_staging."{run_key}"',)).fetchone()[0]


def test_a_retry_after_the_ledger_row_adds_no_second_row_and_a_new_run_adds_its_own(world, sf, monkeypatch):
    from retention.steps import confirm

    contacts(world, sf, "Confirmed contacts", {"again": (60, 40)})
    with world.store_conn() as conn:  # the first test's run left its working tables and unreported rows
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' AND "
                                     "tablename LIKE 'confirmed_contacts%%'").fetchall():
            conn.execute(f'DROP TABLE retention_staging."{table}"')
    real, crashed = confirm.drop_staging, []

    def crash_once_after_the_ledger_row(store, run, policy=None):
        if not crashed:
            crashed.append(run.dag_run_id)
            raise ConnectionError("worker lost after writing the ledger row")
        return real(store, run, policy)

    monkeypatch.setattr(confirm, "drop_staging", crash_once_after_the_ledger_row)
    logical_date = LOGICAL_DATE + dt.timedelta(days=1)
    run, states = run_policy("confirmed_contacts", logical_date)
    assert run.state == "success", states
    assert {ti.task_id: ti.try_number for ti in run.get_task_instances()}["confirm_and_report"] == 2
    rows = [r for r in ledger(world, "confirmed_contacts") if r["dag_run_id"] == run.run_id]
    assert len(rows) == 1 and crashed == [run.run_id]

    again, states = run_policy("confirmed_contacts", logical_date)  # a new DAG run of the same date
    assert again.state == "success", states
    keys = [r["run_key"] for r in ledger(world, "confirmed_contacts")]
    assert keys.count(f"confirmed_contacts__{logical_date:%Y%m%dT%H%M%S}") == 2


@pytest.mark.parametrize(("n", "step", "fault"), [(0, "validate", "session_expiry"), (1, "validate", "rate_limit"),
                                                  (2, "act", "session_expiry"), (3, "act", "rate_limit")])
def test_a_fault_during_validation_or_the_act_step_is_recovered_and_acts_once(world, sf, monkeypatch, n, step, fault):
    """The fault is armed (once) as the step starts, so it meets the step's first Salesforce call: an expired
    session (INVALID_SESSION_ID) is renewed by the JWT connection, a 403 REQUEST_LIMIT_EXCEEDED fails the attempt
    and Airflow retries it."""
    import importlib

    module = importlib.import_module(f"retention.steps.{step}")
    real, attempts = getattr(module, step), []

    def armed(*args, **kwargs):
        attempts.append(1)
        if len(attempts) > 1:  # the retry meets a healthy org
            return real(*args, **kwargs)
        with world.fault(fault, count=1):
            return real(*args, **kwargs)

    monkeypatch.setattr(module, step, armed)
    ids = contacts(world, sf, "Faulty contacts", {f"{step}_{fault}_{k}": (60, 40) for k in range(3)})
    run, states = run_policy("faulty_contacts", LOGICAL_DATE + dt.timedelta(days=n))
    assert run.state == "success", states
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    task = {"validate": "validate_row_counts", "act": "delete_or_mask"}[step]
    assert tries[task] == (2 if fault == "rate_limit" else 1), tries
    rows = cache_rows(world, "faulty_contacts")
    assert {rows[i]["_action_status"] for i in ids.values()} == {"done"}
    assert len({rows[i]["_bulk_job_id"] for i in ids.values()}) == 1  # one job: no record sent twice
    assert live(world, ids.values()) == set()
    mine = [r for r in ledger(world, "faulty_contacts") if r["dag_run_id"] == run.run_id]
    assert [(r["acted"], r["status"]) for r in mine] == [(3, "succeeded")]
