"""Against a running ``airflow standalone`` (scheduler, dag processor, API server and UI) on the project's own
DAG file:

- the UI, in headless Chromium (Debian's, driven by Playwright): log in, see every policy DAG, trigger a dry
  run from the trigger form and see it succeed;
- ``airflow backfill create`` over three past days: three runs, each with its own day's cutoff, leaving the
  cache and the org as three separate daily runs would; reprocessing the same days changes nothing; a day
  that failed (a record Salesforce refused) is re-processed safely with ``--reprocess-behavior failed``;
- one policy of each other kind triggered at once: mirror-sourced delete (its Connect sensor deferred to the
  real triggerer), mask and hard delete, then the store purge over their copies.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sandbox.standalone import stop_standalone
from tests.airflow_deployment import AIRFLOW, deployment_env, fresh_metadata_database, wait_until_healthy
from tests.conftest import REPO, SUITE_DEPLOYMENT, free_port, shared_tmp
from tests.policy_support import cache_rows, org_rows, place_hold, store_rows

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DAG = "retention__accounts_bulk_api"
POLICY_DAGS = ["retention__accounts_bulk_api", "retention__closed_cases_hard_delete", "retention__inactive_contacts",
               "retention__stale_leads_mask"]
BACKFILL_DAG = "retention__backfill_contacts"
# A daily policy for the backfill test, beside the examples. Its time of day is set twelve hours from now, so
# unpausing it (backfill runs need an unpaused DAG) never meets a scheduled run of its own during the test.
BACKFILL_POLICY = """\
id: backfill_contacts
description: Contacts of the backfill test untouched for 30 days
owner: tests
object: Contact
schedule: "{minute} {hour} * * *"
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 30
  where: "Title = 'Backfill test'"
retain:
  table: contact_backfill
  fields:
    LastName: keep
    Email: email_domain
action: delete
source: salesforce_api
"""
# One policy of each other kind, on records of their own (a marker in a field Connect maps), manual-only and
# purged after a day: running them, and the purge, touches nothing another test reads. All read the Connect
# mirror, as the examples do.
KIND_POLICIES = {
    "standalone_contacts": """\
id: standalone_contacts
description: Contacts of the standalone test, read from the Connect mirror, deleted
owner: tests
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 1
  where: "LastName LIKE 'Standalone mirror %'"
retain:
  table: contact_standalone
  fields:
    LastName: keep
    Email: email_domain
  keep_days: 1
action: delete
source: heroku_connect
""",
    "standalone_leads_mask": """\
id: standalone_leads_mask
description: Leads of the standalone test, masked in place
owner: tests
object: Lead
schedule: null
start_date: 2025-01-01
select:
  date_field: CreatedDate
  older_than_days: 1
  where: "Company = 'Standalone mask test'"
retain:
  table: lead_standalone
  fields:
    Company: keep
    Email: email_domain
  keep_days: 1
action: mask
mask:
  FirstName: anonymize
  LastName: pseudonymize
  Email: hash
  Phone: nullify
""",
    "standalone_cases_hard_delete": """\
id: standalone_cases_hard_delete
description: Closed cases of the standalone test, hard-deleted
owner: tests
object: Case
schedule: null
start_date: 2025-01-01
select:
  date_field: ClosedDate
  older_than_days: 1
  where: "IsClosed = true AND Subject = 'Standalone hard delete test'"
  exclude_privacy_holds: false
retain:
  table: case_standalone
  fields:
    Subject: keep
    Status: keep
  keep_days: 1
action: hard_delete
""",
}
PURGE_DAG = "retention_store_purge"


@pytest.fixture(scope="module")
def standalone(sandbox):
    """``airflow standalone`` on its own metadata database (a live scheduler must not see the DAG runs that
    other tests make with dag.test()), with the repository's dags folder and the sandbox's connections."""
    home = shared_tmp("retention-ui-")
    policies = home / "policies"
    policies.mkdir()
    for path in (REPO / "include" / "policies").glob("*.yaml"):
        shutil.copy(path, policies)
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=12)
    (policies / "backfill_contacts.yaml").write_text(BACKFILL_POLICY.format(minute=at.minute, hour=at.hour))
    for policy_id, text in KIND_POLICIES.items():
        (policies / f"{policy_id}.yaml").write_text(text)
    port = free_port()
    env = deployment_env(sandbox, home=home, database_url=fresh_metadata_database(sandbox, "airflow_ui"),
                         dags_folder=REPO / "dags", policies_dir=policies, port=port,
                         # The Connect sensor then waits in the triggerer, as a deployment with this setting runs it.
                         AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="True", **SUITE_DEPLOYMENT)
    # A store password, as a deployment's credential has one (the sandbox's Postgres trusts local connections):
    # the last test looks for it in everything the deployment wrote.
    store = json.loads(env["AIRFLOW_CONN_RETENTION_STORE"])
    env["AIRFLOW_CONN_RETENTION_STORE"] = json.dumps({**store, "password": f"Standalone pw/{os.urandom(6).hex()}+&"})
    for step in ([AIRFLOW, "db", "migrate"],
                 [sys.executable, "-m", "retention.settings_loader", str(REPO / "airflow_settings.yaml")]):
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = open(home / "standalone.log", "wb")
    proc = subprocess.Popen([AIRFLOW, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://localhost:{port}"
    password = wait_until_healthy(url, home, alive=lambda: proc.poll() is None,
                                  logs=lambda: (home / "standalone.log").read_text())
    yield {"url": url, "password": password, "home": home, "env": env,
           "daily_at": (at.hour, at.minute)}
    stop_standalone(proc)
    log.close()
    shutil.rmtree(home, ignore_errors=True)


def _api(standalone, method: str, path: str, **kwargs):
    token = requests.post(f"{standalone['url']}/auth/token", json={"username": "admin",
                          "password": standalone["password"]}, timeout=60).json()["access_token"]
    # A busy machine (two cores shared with the scheduler, the workers and the sandbox) can hold the API server's
    # answer for tens of seconds: a slow answer is not a wrong one.
    return requests.request(method, f"{standalone['url']}/api/v2{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=60, **kwargs)


def test_the_ui_lists_every_policy_and_runs_a_dry_run_from_the_trigger_form(standalone, sandbox):
    from playwright.sync_api import expect, sync_playwright

    # The dag processor parses the DAG file a few seconds after start.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = _api(standalone, "GET", "/dags", params={"dag_id_pattern": "retention__"}).json()
        if listed.get("total_entries", 0) >= len(POLICY_DAGS):
            break
        time.sleep(2)
    shots = Path(os.environ.get("RETENTION_UI_SHOTS", standalone["home"]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(standalone["url"])
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(standalone["password"])
            page.get_by_role("button", name="Sign in").click()
            # Let the login's own redirect finish: a goto issued while it is in flight aborts one of the two.
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=60_000)
            page.wait_for_load_state()

            page.goto(f"{standalone['url']}/dags?search=retention__")
            for dag_id in POLICY_DAGS:
                expect(page.get_by_text(dag_id, exact=True).first).to_be_visible(timeout=60_000)

            # A manual-only policy (schedule: null): unpausing it starts no scheduled run of its own.
            page.goto(f"{standalone['url']}/dags/{DAG}")
            for task_id in ("extract", "validate_row_counts", "delete_or_mask [ ]", "verify_in_salesforce [ ]",
                            "confirm_and_report"):  # "[ ]": a task mapped over the run's chunks
                expect(page.get_by_role("link", name=task_id, exact=True)).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Dag Docs").click()  # the policy rendered as the DAG's doc
            expect(page.get_by_text("Accounts not modified for five years").first).to_be_visible()
            page.keyboard.press("Escape")
            # Unpause (the switch in the DAG's heading): runs of a paused DAG stay queued.
            page.get_by_role("heading").locator('[data-scope="switch"][data-part="control"]').first.click()
            page.get_by_role("button", name="Trigger Dag").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_be_visible()
            page.screenshot(path=str(shots / "trigger-form.png"))
            dialog.locator('[data-scope="switch"][data-part="control"]').first.click()  # the dry_run param
            expect(dialog.get_by_role("checkbox").first).to_be_checked()
            page.screenshot(path=str(shots / "trigger-form-ticked.png"))
            dialog.get_by_role("button", name="Trigger").last.click()
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))
            raise
        finally:
            browser.close()

    deadline = time.monotonic() + 240
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = _api(standalone, "GET", f"/dags/{DAG}/dagRuns").json()["dag_runs"]
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(2)
    (run,) = runs  # the one run triggered from the form
    assert run["state"] == "success" and run["run_type"] == "manual", run
    assert run["conf"]["dry_run"] is True
    tis = _api(standalone, "GET", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances")
    states = {t["task_id"]: t["state"] for t in tis.json()["task_instances"]}
    assert states["extract"] == "success"
    assert {states[t] for t in ("subset", "load_to_cache", "delete_or_mask", "confirm_and_report")} == {"skipped"}
    with sandbox.store_conn() as conn:  # the dry run wrote nothing to the ledger
        assert conn.execute("SELECT count(*) FROM retention.runs WHERE dag_run_id = %s",
                            (run["dag_run_id"],)).fetchone()[0] == 0


def _airflow(standalone, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], env=standalone["env"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _wait_for_runs(standalone, dag_id: str, count: int, timeout: float = 420) -> list[dict]:
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = _api(standalone, "GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "logical_date"}).json()[
            "dag_runs"]
        if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"{dag_id}: runs not finished in {timeout}s: {runs}")


def _wait_for_backfills(standalone, dag_id: str, timeout: float = 120) -> None:
    """The scheduler marks a backfill completed a loop after its last run; only then may another start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfills = _api(standalone, "GET", "/backfills", params={"dag_id": dag_id}).json()["backfills"]
        if all(b["completed_at"] for b in backfills):
            return
        time.sleep(1)
    raise AssertionError(f"{dag_id}: backfill not completed in {timeout}s: {backfills}")


def _contacts_modified_at(sandbox, sf, dates: dict[str, dt.datetime]) -> dict[str, str]:
    """Contacts of the backfill policy (Title 'Backfill test'), each last modified at its given time."""
    ids = {name: sf.Contact.create({"LastName": f"Backfill {name}", "Title": "Backfill test",
                                    "Email": f"{name}@backfill.example"})["id"] for name in dates}
    with sandbox.org_conn() as conn:
        for name, when in dates.items():  # the API cannot set LastModifiedDate; the org's database can
            conn.execute("UPDATE org.contact SET lastmodifieddate = %s, systemmodstamp = %s WHERE id = %s",
                         (when, when, ids[name]))
    return ids


def _backfill(standalone, days: list[dt.datetime], *options: str, at_once: int = 1) -> None:
    """``airflow backfill create`` over ``days``, ``at_once`` DAG runs at a time, and wait until the scheduler
    completed it."""
    _airflow(standalone, "backfill", "create", "--dag-id", BACKFILL_DAG, "--from-date", days[0].isoformat(),
             "--to-date", days[-1].isoformat(), "--max-active-runs", str(at_once), *options)
    _wait_for_backfills(standalone, BACKFILL_DAG, timeout=420)


def test_a_backfill_over_three_days_runs_each_day_with_its_own_cutoff(standalone, sandbox, sf):
    hour, minute = standalone["daily_at"]
    now = dt.datetime.now(dt.UTC)
    last = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if last > now:
        last -= dt.timedelta(days=1)
    days = [last - dt.timedelta(days=2), last - dt.timedelta(days=1), last]
    cutoffs = [d - dt.timedelta(days=30) for d in days]
    # Contacts last modified inside each day's window (the first, second and third run's), one after the
    # third cutoff (no run's), and one under a privacy hold (never touched).
    dates = {"first": cutoffs[0] - dt.timedelta(hours=1), "second": cutoffs[0] + dt.timedelta(hours=1),
             "third": cutoffs[1] + dt.timedelta(hours=1), "none": cutoffs[2] + dt.timedelta(hours=1),
             "held": cutoffs[0] - dt.timedelta(hours=2)}
    ids = _contacts_modified_at(sandbox, sf, dates)
    place_hold(sf, ids["held"], "Backfill hold")

    deadline = time.monotonic() + 120  # the dag processor parses the new policy's DAG
    while _api(standalone, "GET", f"/dags/{BACKFILL_DAG}").status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    dry = _airflow(standalone, "backfill", "create", "--dag-id", BACKFILL_DAG, "--from-date", days[0].isoformat(),
                   "--to-date", days[-1].isoformat(), "--dry-run")
    assert all(f"{d:%Y-%m-%d %H:%M:%S}" in dry.stdout for d in days), dry.stdout
    # The backfill first: unpausing a DAG whose catchup is off schedules its latest day at once, unless a run
    # of that day exists already (the backfill's). The backfill's runs start once the DAG is unpaused.
    _airflow(standalone, "backfill", "create", "--dag-id", BACKFILL_DAG, "--from-date", days[0].isoformat(),
             "--to-date", days[-1].isoformat(), "--max-active-runs", "1")
    _airflow(standalone, "dags", "unpause", BACKFILL_DAG)
    runs = _wait_for_runs(standalone, BACKFILL_DAG, 3)
    assert [r["run_type"] for r in runs] == ["backfill"] * 3
    assert [r["state"] for r in runs] == ["success"] * 3, runs
    assert [dt.datetime.fromisoformat(r["logical_date"]) for r in runs] == days

    run_keys = [f"backfill_contacts__{d:%Y%m%dT%H%M%S}" for d in days]
    with sandbox.store_conn() as conn:
        ledger = conn.execute("SELECT run_key, cutoff, eligible, held, acted, status FROM retention.runs WHERE "
                              "policy_id = 'backfill_contacts' ORDER BY id").fetchall()
        cache = dict(conn.execute("SELECT sfid, _retention_run FROM cache.contact_backfill WHERE _action_status = "
                                  "'done'").fetchall())
    # One ledger row per day, each with its own cutoff and the one record that became eligible that day.
    assert ledger == [(k, c, 1, 1, 1, "succeeded") for k, c in zip(run_keys, cutoffs, strict=True)]
    assert cache == {ids["first"]: run_keys[0], ids["second"]: run_keys[1], ids["third"]: run_keys[2]}
    with sandbox.org_conn() as conn:
        deleted = dict(conn.execute("SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)",
                                    (list(ids.values()),)).fetchall())
    assert {n for n, i in ids.items() if deleted[i]} == {"first", "second", "third"}

    # Reprocessing the same days is safe: three more runs, nothing eligible, nothing changed.
    _wait_for_backfills(standalone, BACKFILL_DAG)
    # The last two days again, both DAG runs at once: the policy's lock lets one work at a time, the other waits in
    # extract.
    _backfill(standalone, days[1:], "--reprocess-behavior", "completed", at_once=2)
    runs = _wait_for_runs(standalone, BACKFILL_DAG, 3)
    assert [r["state"] for r in runs] == ["success"] * 3, [
        (r["dag_run_id"], {t["task_id"]: t["state"] for t in _api(
            standalone, "GET", f"/dags/{BACKFILL_DAG}/dagRuns/{r['dag_run_id']}/taskInstances").json()[
            "task_instances"]}, _task_log(standalone, BACKFILL_DAG, r["dag_run_id"], "extract")[-3000:])
        for r in runs if r["state"] != "success"]
    with sandbox.store_conn() as conn:
        again = conn.execute("SELECT run_key, eligible, acted FROM retention.runs WHERE policy_id = "
                             "'backfill_contacts' ORDER BY id").fetchall()[3:]
        assert dict(conn.execute("SELECT sfid, _retention_run FROM cache.contact_backfill").fetchall()) == cache
    assert sorted(again) == [(k, 0, 0) for k in run_keys[1:]]
    spans = []  # (extract started, extract ended, confirm ended) of each reprocessed run
    for r in runs[1:]:
        tis = {t["task_id"]: t for t in _api(standalone, "GET", f"/dags/{BACKFILL_DAG}/dagRuns/{r['dag_run_id']}/"
                                                                "taskInstances").json()["task_instances"]}
        spans.append(tuple(dt.datetime.fromisoformat(v) for v in (
            tis["extract"]["start_date"], tis["extract"]["end_date"], tis["confirm_and_report"]["end_date"])))
    spans.sort(key=lambda s: s[2])
    for before, after in zip(spans, spans[1:], strict=False):
        assert after[1] >= before[2], spans  # the next run's extract got the policy once the previous one ended
    assert any(after[0] < before[2] for before, after in zip(spans, spans[1:], strict=False)), spans  # it waited

    # Two earlier days, the first of which fails (Salesforce refuses the delete of its one record):
    # re-processing the failed day afterwards is safe, nothing is lost or done twice.
    earlier = [d - dt.timedelta(days=3) for d in days[:2]]
    early_cutoffs = [d - dt.timedelta(days=30) for d in earlier]
    more = _contacts_modified_at(sandbox, sf, {"x": early_cutoffs[0] - dt.timedelta(hours=1),
                                               "y": early_cutoffs[0] + dt.timedelta(hours=1)})
    early_keys = [f"backfill_contacts__{d:%Y%m%dT%H%M%S}" for d in earlier]
    with sandbox.fault("record_failures", rate=1.0, count=1):  # the next ingest row fails: x, on the first day
        _backfill(standalone, earlier)
    runs = _wait_for_runs(standalone, BACKFILL_DAG, 5)
    assert [r["state"] for r in runs[:2]] == ["failed", "success"], runs
    with sandbox.store_conn() as conn:
        rows = conn.execute("SELECT run_key, eligible, acted, failed, status FROM retention.runs WHERE run_key = "
                            "ANY(%s) ORDER BY id", (early_keys,)).fetchall()
    # The first day kept x retained and failed; the second day took x again with its own record y.
    assert rows == [(early_keys[0], 1, 0, 1, "partially_failed"), (early_keys[1], 2, 2, 0, "succeeded")]

    _backfill(standalone, earlier, "--reprocess-behavior", "failed")
    runs = _wait_for_runs(standalone, BACKFILL_DAG, 5)
    assert [r["state"] for r in runs] == ["success"] * 5, runs
    with sandbox.store_conn() as conn:
        rerun = conn.execute("SELECT run_key, eligible, acted, failed, status FROM retention.runs WHERE run_key = "
                             "ANY(%s) ORDER BY id", (early_keys,)).fetchall()[2:]
        kept = dict(conn.execute("SELECT sfid, _retention_run || ' ' || _action_status FROM cache.contact_backfill "
                                 "WHERE sfid = ANY(%s)", (list(more.values()),)).fetchall())
    assert rerun == [(early_keys[0], 0, 0, 0, "succeeded")]  # only the failed day ran again: nothing left to do
    assert kept == {more["x"]: f"{early_keys[1]} done", more["y"]: f"{early_keys[1]} done"}
    with sandbox.org_conn() as conn:
        assert conn.execute("SELECT bool_and(isdeleted) FROM org.contact WHERE id = ANY(%s)",
                            (list(more.values()),)).fetchone()[0] is True


def _trigger(standalone, dag_id: str, logical_date: dt.datetime) -> str:
    made = _api(standalone, "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date.isoformat()})
    assert made.status_code == 200, made.text
    return made.json()["dag_run_id"]


def _wait_for_run(standalone, dag_id: str, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = _api(standalone, "GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
        if run.get("state") in ("success", "failed"):
            return run
        time.sleep(2)
    tis = _api(standalone, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    raise AssertionError(f"{dag_id} {run_id}: not finished in {timeout}s: {run['state']}; tasks "
                         f"{ {t['task_id']: t['state'] for t in tis} }")


def _task_log(standalone, dag_id: str, run_id: str, task_id: str) -> str:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    ti = _api(standalone, "GET", path).json()
    log = _api(standalone, "GET", f"{path}/logs/{ti['try_number']}", params={"full_content": True})
    assert log.status_code == 200, log.text
    return json.dumps(log.json()["content"])


def test_each_kind_of_policy_and_the_store_purge_run_under_the_scheduler(standalone, sandbox, sf):
    from retention import masking, transforms

    contacts = [sf.Contact.create({"LastName": f"Standalone mirror {i}", "Email": f"c{i}@mirror.example"})["id"]
                for i in range(3)]
    leads = [sf.Lead.create({"FirstName": f"Ann{i}", "LastName": f"Lead{i}", "Company": "Standalone mask test",
                             "Email": f"l{i}@mask.example", "Phone": "+47 555 0100"})["id"] for i in range(3)]
    cases = [sf.Case.create({"Subject": "Standalone hard delete test", "Status": "Closed"})["id"] for _ in range(3)]
    with sandbox.org_conn() as conn:  # three days old (the API cannot set these dates; the org's database can)
        conn.execute("UPDATE org.contact SET lastmodifieddate = now() - interval '3 days' WHERE id = ANY(%s)",
                     (contacts,))
        conn.execute("UPDATE org.lead SET createddate = now() - interval '3 days' WHERE id = ANY(%s)", (leads,))
        conn.execute("""UPDATE org."case" SET closeddate = now() - interval '3 days' WHERE id = ANY(%s)""", (cases,))
    leads_before = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.lead WHERE id = ANY(%s)", (leads,))}
    # Connect mirrors them within seconds: the sensors' triggers then pass on their first check, not 30s later.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store_rows(sandbox, """SELECT
            (SELECT count(*) FROM salesforce.contact WHERE sfid = ANY(%s) AND lastmodifieddate < now() - interval
             '2 days') + (SELECT count(*) FROM salesforce.lead WHERE sfid = ANY(%s) AND createddate < now() -
             interval '2 days') + (SELECT count(*) FROM salesforce."case" WHERE sfid = ANY(%s) AND closeddate <
             now() - interval '2 days') AS n""", (contacts, leads, cases))[0]["n"] < 9:
        time.sleep(1)

    dags = {f"retention__{policy_id}": policy_id for policy_id in KIND_POLICIES}
    deadline = time.monotonic() + 120  # the dag processor parses the policies (at the fixture's start)
    while time.monotonic() < deadline and any(_api(standalone, "GET", f"/dags/{d}").status_code != 200
                                              for d in [*dags, PURGE_DAG]):
        time.sleep(2)
    # Unpausing the purge DAG starts its latest daily run at once (catchup is off): it finds nothing of ours to
    # purge. The scheduler runs no task of a run whose logical date is in the future: this one is just past.
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    for dag_id in [*dags, PURGE_DAG]:
        assert _api(standalone, "PATCH", f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200
    run_ids = {dag_id: _trigger(standalone, dag_id, when) for dag_id in dags}
    runs = {dag_id: _wait_for_run(standalone, dag_id, run_id) for dag_id, run_id in run_ids.items()}
    assert {d: r["state"] for d, r in runs.items()} == dict.fromkeys(dags, "success"), runs

    for dag_id, run_id in run_ids.items():
        # The sensor deferred and the triggerer's event resumed it: only execute_complete logs this sentence.
        assert "Heroku Connect mirror ready" in _task_log(standalone, dag_id, run_id, "wait_for_connect_sync")
        (row,) = store_rows(sandbox, "SELECT * FROM retention.runs WHERE run_key = %s",
                            (f"{dags[dag_id]}__{when:%Y%m%dT%H%M%S}",))
        assert (row["status"], row["eligible"], row["acted"], row["dag_run_id"]) == ("succeeded", 3, 3, run_id), row

    with sandbox.org_conn() as conn:
        deleted = dict(conn.execute("SELECT id, isdeleted FROM org.contact WHERE id = ANY(%s)", (contacts,)).fetchall())
        left = conn.execute('SELECT count(*) FROM org."case" WHERE id = ANY(%s)', (cases,)).fetchone()[0]
    assert deleted == dict.fromkeys(contacts, True)  # in the recycle bin
    assert left == 0  # hard-deleted: gone, not in the recycle bin
    after = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.lead WHERE id = ANY(%s)", (leads,))}
    for sfid, before in leads_before.items():
        masked = after[sfid]
        assert not masked["isdeleted"] and masked["company"] == before["company"]
        assert len(masked["firstname"]) == 5 and masked["firstname"] != before["firstname"]
        assert masked["lastname"] in masking.LAST_NAMES and masked["email"] != before["email"]
        assert masked["phone"] is None

    retained = {table: cache_rows(sandbox, table) for table in ("contact_standalone", "lead_standalone",
                                                                 "case_standalone")}
    assert {t: set(rows) for t, rows in retained.items()} == {
        "contact_standalone": set(contacts), "lead_standalone": set(leads), "case_standalone": set(cases)}
    assert all(r["_action_status"] == "done" for rows in retained.values() for r in rows.values())
    assert {r["lastname"] for r in retained["contact_standalone"].values()} == {
        f"Standalone mirror {i}" for i in range(3)}
    assert {r["sfid"]: r["email"] for r in retained["lead_standalone"].values()} == {
        sfid: transforms.apply("email_domain", None, r["email"], key=b"k") for sfid, r in leads_before.items()}
    assert {r["subject"] for r in retained["case_standalone"].values()} == {"Standalone hard delete test"}

    # Copies two days old, past their one-day keep_days, once the scheduled purge run is over (the purge compares
    # _retained_at with its logical date, which cannot be in the future).
    _wait_for_runs(standalone, PURGE_DAG, 0)
    with sandbox.store_conn() as conn:
        for table in retained:
            conn.execute(f"UPDATE cache.{table} SET _retained_at = _retained_at - interval '2 days'")
    purge_id = _trigger(standalone, PURGE_DAG, dt.datetime.now(dt.UTC).replace(microsecond=0))
    purge = _wait_for_run(standalone, PURGE_DAG, purge_id)
    assert purge["state"] == "success", purge
    purged = {r["policy_id"]: r for r in store_rows(sandbox, "SELECT * FROM retention.runs WHERE dag_run_id = %s "
                                                             "AND action = 'purge'", (purge_id,))}
    for policy_id in KIND_POLICIES:
        assert (purged[policy_id]["status"], purged[policy_id]["acted"]) == ("succeeded", 3), purged[policy_id]
    assert all(cache_rows(sandbox, table) == {} for table in retained)


def test_task_log_files_and_everything_else_the_deployment_wrote_hold_no_secret(standalone):
    """Invariant 5 where dag.test() writes nothing: the task log files under AIRFLOW_HOME/logs, written by the
    scheduler's task processes for every run above, and the rest of the deployment's home (its own log, config),
    hold neither the store password, the hash key, the Heroku Connect token nor the connected app's private key, in
    any of their obvious encodings (tests/retention/test_secrets.py scans the rest of what a run writes)."""
    from tests.retention.test_secrets import encodings

    env = standalone["env"]
    private_key = Path(env["SALESFORCE_PRIVATE_KEY_FILE"]).read_text().splitlines()[1]  # key material
    secrets = {"store password": json.loads(env["AIRFLOW_CONN_RETENTION_STORE"])["password"],
               "hash key": json.loads(env["AIRFLOW_CONN_RETENTION_HASH_KEY"])["password"],
               "Heroku Connect token": json.loads(env["AIRFLOW_CONN_HEROKU_CONNECT_DEFAULT"])["password"],
               "private key": private_key}
    home = standalone["home"]
    written = {p: p.read_text(errors="replace") for p in home.rglob("*") if p.is_file()}
    task_logs = [p for p in written if p.is_relative_to(home / "logs") and "dag_id=retention__" in str(p)]
    confirm_logs = [p for p in task_logs if "task_id=confirm_and_report" in str(p) and p.name.startswith("attempt=")]
    assert confirm_logs and any("ledger row" in written[p] for p in confirm_logs)  # the runs' own task logs
    for name, secret in secrets.items():
        for form in encodings(secret):
            leaked = [str(p.relative_to(home)) for p, text in written.items() if form in text]
            assert not leaked, f"the {name} ({form!r}) was written to: {', '.join(leaked)}"
