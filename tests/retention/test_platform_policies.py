"""Real DAG runs against the platform's rules: converted leads Salesforce refuses, an org without Privacy Center,
accounts whose delete would take children the policy does not retain, and a child added while a run is under
way. In each case nothing is deleted or masked that has no retained, validated copy, and the run says why."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.policy_support import (
    ELIGIBLE_ACCOUNTS,
    STALE_LEADS,
    cache_rows,
    org_rows,
    policy_world,
    store_rows,
)

LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    with policy_world(sandbox, contacts=300, seed=31):
        yield sandbox


def dags():
    from tests.dags import platform_dags

    return platform_dags


def run_policy(policy_id: str, logical_date: dt.datetime):
    dag = getattr(dags(), f"retention__{policy_id}")
    run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def ledger(sandbox, policy_id: str) -> list[dict]:
    return store_rows(sandbox, "SELECT * FROM retention.runs WHERE policy_id = %s ORDER BY id", (policy_id,))


def test_converted_leads_are_refused_kept_and_never_selected_again(world, capfd):
    """Salesforce refuses to update a converted lead (CANNOT_UPDATE_CONVERTED_LEAD, "A converted lead couldn't be
    updated": StatusCode; Object Reference: Lead). A mask policy that does not leave them out gets them refused:
    retained, reported with the code, a warning (the run succeeds), and not selected by later runs."""
    sandbox = world
    cutoff = LOGICAL_DATE - dt.timedelta(days=365)
    everything = {r["id"]: r for r in org_rows(sandbox, "SELECT * FROM org.lead WHERE NOT isdeleted AND "
                                                        "createddate < %s ORDER BY id", (cutoff,))}
    unconverted = {r["id"] for r in org_rows(sandbox, STALE_LEADS, (cutoff,))}
    converted = {i for i, r in everything.items() if r["isconverted"]}
    assert converted and unconverted

    capfd.readouterr()
    run, states = run_policy("every_lead_mask", LOGICAL_DATE)
    assert run.state == "success", states
    assert "refused by Salesforce for good" in capfd.readouterr().out
    cache = cache_rows(sandbox, "every_lead")
    refused = {k for k, v in cache.items() if v["_action_status"] == "refused"}
    assert converted <= refused
    assert all(cache[k]["_action_error"].startswith("CANNOT_UPDATE_CONVERTED_LEAD:") for k in refused)
    after = {r["id"]: r for r in org_rows(sandbox, "SELECT id, firstname, email FROM org.lead WHERE id = ANY(%s)",
                                          (list(converted),))}
    assert all((after[i]["firstname"], after[i]["email"]) == (everything[i]["firstname"], everything[i]["email"])
               for i in converted)  # untouched in Salesforce, and the retained copy kept
    (first,) = ledger(sandbox, "every_lead_mask")
    assert first["status"] == "succeeded" and first["refused"] == len(refused) and first["failed"] == 0
    assert f"{len(refused)} refused by Salesforce" in first["message"]

    # A later run does not select them again: a refused record would only be refused again.
    run, states = run_policy("every_lead_mask", LOGICAL_DATE + dt.timedelta(days=1))
    assert run.state == "success", states
    second = ledger(sandbox, "every_lead_mask")[-1]
    assert second["refused"] == 0 and second["status"] == "succeeded"
    again = cache_rows(sandbox, "every_lead")
    assert all(again[k]["_retention_run"] == cache[k]["_retention_run"] for k in refused)


def test_without_privacy_center_a_run_stops_before_touching_anything(world):
    """PrivacyHold needs "the Privacy Center license and the Manage Privacy Hold user permission" (Object
    Reference: PrivacyHold); without them a policy that honours holds must not act as if there were none. Told
    not to honour holds, the same policy runs."""
    sandbox = world
    with sandbox.org_settings(privacy_center=False):
        run, states = run_policy("unlicensed_contacts", LOGICAL_DATE)
        # The first step that asks the org about PrivacyHold stops the run: the Connect check (which compares the
        # mirror of PrivacyHold with the org) for a mirror policy, extract for a Bulk API one.
        assert run.state == "failed" and states["wait_for_connect_sync"] == "failed", states
        assert states["extract"] == states["delete_or_mask"] == "upstream_failed"
        assert not store_rows(sandbox, "SELECT to_regclass('cache.unlicensed_contact') AS t")[0]["t"] or \
            not store_rows(sandbox, "SELECT 1 FROM cache.unlicensed_contact")
        task = next(ti for ti in run.get_task_instances() if ti.task_id == "wait_for_connect_sync")
        assert task.try_number == 1  # a configuration problem: not retried

        run, states = run_policy("unheld_contacts", LOGICAL_DATE)
        assert run.state == "success", states
    assert ledger(sandbox, "unlicensed_contacts") == []


def test_accounts_whose_delete_would_take_unretained_children_are_kept_back(world, sf, capfd):
    """Deleting an account takes its opportunities too ("Guidelines for Deleting Accounts"; describe's
    childRelationships says cascadeDelete). A policy that retains only the contacts keeps back, per account and
    with the reason, every account that has opportunities, and deletes the others. Its API budget counts the
    query jobs each such relationship costs, at extract and before each chunk's delete."""
    sandbox = world
    # A cutoff a month ahead: every account is old enough, the two made here too.
    logical_date = LOGICAL_DATE + dt.timedelta(days=1825 + 30)
    cutoff = logical_date - dt.timedelta(days=1825)
    kept = sf.Account.create({"Name": "Has a deal"})["id"]
    sf.Contact.create({"LastName": "Buyer", "AccountId": kept})
    sf.Opportunity.create({"Name": "Open deal", "StageName": "Qualification", "CloseDate": "2031-01-31",
                           "AccountId": kept})
    deleted = sf.Account.create({"Name": "Only people"})["id"]
    sf.Contact.create({"LastName": "Person", "AccountId": deleted})
    eligible = {r["id"] for r in org_rows(sandbox, ELIGIBLE_ACCOUNTS, {"cutoff": cutoff})}
    assert {kept, deleted} <= eligible
    with_opportunities = {r["accountid"] for r in org_rows(
        sandbox, "SELECT DISTINCT accountid FROM org.opportunity WHERE accountid = ANY(%s) AND NOT isdeleted",
        (list(eligible),))}
    assert with_opportunities and eligible - with_opportunities

    run, states = run_policy("contacts_only_accounts", logical_date)
    assert run.state == "success", states
    live = {r["id"] for r in org_rows(sandbox, "SELECT id FROM org.account WHERE id = ANY(%s) AND NOT isdeleted",
                                      (list(eligible),))}
    assert live == with_opportunities
    assert set(cache_rows(sandbox, "contacts_only_account")) == eligible - with_opportunities
    (row,) = ledger(sandbox, "contacts_only_accounts")
    assert row["blocked"] == len(with_opportunities) and set(row["blocked_records"]) == with_opportunities
    reason = next(iter(row["blocked_records"].values()))
    assert reason.startswith("CASCADE_NOT_RETAINED: deleting it would also delete") and "Opportunities" in reason
    assert row["acted"] == len(eligible - with_opportunities)
    assert_budget_counts_undeclared(sf, dags().POLICIES["contacts_only_accounts"], capfd.readouterr().out)


def assert_budget_counts_undeclared(sf, policy, out: str) -> None:
    """The run's logged estimate is the budget's for the records it saw, with the policy's unretained cascading
    relationships (from the org's describe) counted."""
    import re

    from retention import budget, cascade
    from retention.hooks.salesforce_bulk import MAX_POLL_INTERVAL, configured_poll_interval

    undeclared = cascade.undeclared(policy, sf.Account.describe())
    assert undeclared, "the org's Account has cascading relationships the policy does not retain"
    records, spent = map(int, re.search(r"acting on up to (\d+) records spends about (\d+) API requests", out).groups())
    poll = {"poll_interval": configured_poll_interval(), "max_poll_interval": MAX_POLL_INTERVAL}
    assert spent == budget.for_run(policy, records, **poll, undeclared=len(undeclared)).api_requests
    assert spent > budget.for_run(policy, records, **poll).api_requests


def test_a_child_added_during_the_run_keeps_its_parent_until_it_is_retained(world, monkeypatch, sf):
    """Children can be created while a run is under way; a delete would then take one without a retained copy.
    Added before validation, the children's count disagrees with the org's and nothing is deleted; added after,
    the act step asks the org again just before the delete, and that parent waits (failed, CHILDREN_CHANGED) while
    the others go. The next run retains the new children first, then deletes them with their parent."""
    from retention import cascade
    from retention.steps import act

    sandbox = world
    logical_date = LOGICAL_DATE + dt.timedelta(days=1825 + 40)  # every account is old enough
    target = sf.Account.create({"Name": "Growing"})["id"]
    sf.Contact.create({"LastName": "First", "AccountId": target})
    added: list[str] = []

    def a_colleague_adds_a_contact():
        added.append(sf.Contact.create({"LastName": f"Late arrival {len(added)}", "AccountId": target})["id"])

    real_load, real_pending = cascade.load, act.pending_count

    def load_then_add(conn, policy, run, **kwargs):
        counts = real_load(conn, policy, run, **kwargs)
        a_colleague_adds_a_contact()
        return counts

    monkeypatch.setattr(cascade, "load", load_then_add)
    run, states = run_policy("growing_accounts", logical_date)
    # A failed validation keeps the run's working tables for inspection; this test drops them.
    with sandbox.store_conn() as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' "
                                     "AND tablename LIKE 'growing_accounts__%'").fetchall():
            conn.execute(f'DROP TABLE retention_staging."{table}"')
    assert run.state == "failed" and states["validate_row_counts"] == "failed", states
    assert states["delete_or_mask"] == "upstream_failed"
    assert org_rows(sandbox, "SELECT count(*) AS n FROM org.account WHERE NOT isdeleted AND id = %s", (target,)) == [
        {"n": 1}]

    def add_then_pending(store, policy, run, chunk):
        a_colleague_adds_a_contact()
        return real_pending(store, policy, run, chunk)

    monkeypatch.setattr(cascade, "load", real_load)
    monkeypatch.setattr(act, "pending_count", add_then_pending)
    run, states = run_policy("growing_accounts", logical_date + dt.timedelta(days=1))
    assert run.state == "failed" and states["confirm_and_report"] == "failed", states
    parents = cache_rows(sandbox, "growing_account")
    assert parents[target]["_action_status"] == "failed"
    assert parents[target]["_action_error"].startswith(f"CHILDREN_CHANGED: Contact {added[1]}")
    assert org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE accountid = %s AND NOT isdeleted",
                    (target,)) == [{"n": 3}]
    others = {k: (v["_action_status"], v["_action_error"]) for k, v in parents.items()
              if k != target and v["_retention_run"] == parents[target]["_retention_run"]}
    assert all(status == "done" for status, _ in others.values()), others

    monkeypatch.setattr(act, "pending_count", real_pending)
    run, states = run_policy("growing_accounts", logical_date + dt.timedelta(days=2))
    assert run.state == "success", states
    contacts = cache_rows(sandbox, "growing_contact")
    assert all(contacts[i]["_action_status"] == "done" for i in added)
    assert cache_rows(sandbox, "growing_account")[target]["_action_status"] == "done"
    assert org_rows(sandbox, "SELECT count(*) AS n FROM org.contact WHERE accountid = %s AND NOT isdeleted",
                    (target,)) == [{"n": 0}]


def test_a_cascade_childs_retained_copy_is_purged_with_its_parents(world):
    """Children are kept as long as the parent they were deleted with: the store purge takes them with it, in
    the same transaction and ledger row, and never one under a privacy hold."""
    from retention import purge
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook

    sandbox = world
    base = dags().POLICIES["growing_accounts"]
    policy = base.model_copy(update={"retain": base.retain.model_copy(update={"keep_days": 30})})
    parents = {k: v for k, v in cache_rows(sandbox, "growing_account").items() if v["_action_status"] == "done"}
    children = {k: v for table in ("growing_contact", "growing_opportunity")
                for k, v in cache_rows(sandbox, table).items() if v["_parent_sfid"] in parents}
    assert parents and any(k.startswith("003") for k in children) and any(k.startswith("006") for k in children)
    with sandbox.store_conn() as conn:  # retained two months ago
        for table in ("growing_account", "growing_contact", "growing_opportunity"):
            conn.execute(f"UPDATE cache.{table} SET _retained_at = now() - interval '60 days'")
    store = RetentionStoreHook()
    purge.mirror_holds(store, SalesforceBulk2Hook())
    result = purge.purge(store, policy, as_of=dt.datetime.now(dt.UTC), dag_run_id="manual__children",
                         started_at=dt.datetime.now(dt.UTC))
    assert result.purged == len(parents)
    assert not (set(cache_rows(sandbox, "growing_contact")) | set(cache_rows(sandbox, "growing_opportunity"))) & \
        set(children)
    recorded = {r["sfid"] for r in store_rows(sandbox, "SELECT sfid FROM retention.purged_records WHERE ledger_id = %s",
                                              (result.ledger_id,))}
    assert recorded == set(parents) | set(children)
    (row,) = store_rows(sandbox, "SELECT message FROM retention.runs WHERE id = %s", (result.ledger_id,))
    assert f"with them {len(children)} rows of their cascade children" in row["message"]


def test_a_child_reported_gone_with_its_parent_but_live_in_the_org_fails_the_run(world, monkeypatch, sf, capfd):
    """Children that went with their parents are read back from the org as the parents are, by one Bulk 2.0 query
    job over their Id range (not a REST query per few hundred Ids). One is moved to another account after the act
    step's last look at the children and before the delete: the delete leaves it live, yet it is recorded as gone
    with its parent. Confirm fails naming it, and every copy is kept."""
    from retention.steps import act

    sandbox = world
    logical_date = LOGICAL_DATE + dt.timedelta(days=1825 + 50)  # every account is old enough
    parent = sf.Account.create({"Name": "Moving out"})["id"]
    children = [sf.Contact.create({"LastName": f"Moving {n}", "AccountId": parent})["id"] for n in range(3)]
    real = act._submit

    def move_one_then_submit(*args, **kwargs):
        elsewhere = sf.Account.create({"Name": "New home"})["id"]  # made after extract: not in this run
        sf.Contact.update(children[1], {"AccountId": elsewhere})
        return real(*args, **kwargs)

    monkeypatch.setattr(act, "_submit", move_one_then_submit)
    (started,) = org_rows(sandbox, "SELECT clock_timestamp() AS at")
    run, states = run_policy("moved_accounts", logical_date)
    with sandbox.store_conn() as conn:  # a failed confirm keeps the working tables: this test drops them
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' "
                                     "AND tablename LIKE 'moved_accounts__%'").fetchall():
            conn.execute(f'DROP TABLE retention_staging."{table}"')
    assert run.state == "failed" and states["confirm_and_report"] == "failed", states
    assert f"records reported done are not deleted in Salesforce, e.g. {children[1]}" in capfd.readouterr().out
    kept = cache_rows(sandbox, "moved_contact")
    assert {kept[c]["_action_status"] for c in children} == {"done"}  # copies kept
    assert cache_rows(sandbox, "moved_account")[parent]["_action_status"] == "done"
    assert org_rows(sandbox, "SELECT id FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted", (children,)) == [
        {"id": children[1]}]
    read_backs = org_rows(sandbox, "SELECT query FROM bulk.jobs WHERE kind = 'query' AND object = 'Contact' AND "
                                   "created_at > %s AND query LIKE 'SELECT Id FROM Contact WHERE Id >= %%'",
                          (started["at"],))
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}["confirm_and_report"]
    assert len(read_backs) == tries, read_backs  # one job each attempt
