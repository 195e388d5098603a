"""The store purge DAG (``retain.keep_days``), run for real with ``dag.test()``: it mirrors the org's privacy
holds into the store, removes the cache rows past keep_days except held ones and those whose action has not
finished, records the purge in the chained ledger with the purged ids, and a purged masked record is not
retained again. It refuses to purge when the holds could not be mirrored."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from tests.policy_support import cache_rows, org_rows, place_hold, policy_dags, policy_world, store_rows

TODAY = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
# Logical dates of this module's mask runs, distinct from the other modules' runs of the same policy.
MASK_DATE = TODAY + dt.timedelta(days=60)
MASK_AGAIN = TODAY + dt.timedelta(days=61)
AGE = "800 days"  # older than stale_leads_mask's keep_days (730)


@pytest.fixture(scope="module")
def world(sandbox, airflow_db):
    with policy_world(sandbox, contacts=300, seed=37):
        yield sandbox


@pytest.fixture(scope="module")
def sf(world):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    return SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()


def _run(dag, logical_date, **conf):
    run = dag.test(logical_date=logical_date, run_conf=conf)
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def _contacts(sandbox) -> dict[str, dict]:
    """cache.contact, or nothing when this module runs before any contact was retained."""
    exists = store_rows(sandbox, "SELECT to_regclass('cache.contact') IS NOT NULL AS e")[0]["e"]
    return cache_rows(sandbox, "contact") if exists else {}


def _purge_rows(sandbox, dag_run_id: str) -> dict[str, dict]:
    rows = store_rows(sandbox, "SELECT * FROM retention.runs WHERE dag_run_id = %s AND action = 'purge'",
                      (dag_run_id,))
    return {r["policy_id"]: r for r in rows}


def test_the_purge_dag_has_a_task_for_each_policy_that_keeps_copies_for_a_while():
    dag = policy_dags().retention_store_purge
    assert set(dag.task_ids) == {"mirror_holds", "purge__stale_leads_mask", "purge__inactive_contacts"}
    assert dag.get_task("purge__stale_leads_mask").upstream_task_ids == {"mirror_holds"}
    assert dag.catchup is False and "keep_days" in dag.doc_md and dag.params["dry_run"] is False


def test_expired_copies_are_purged_held_and_unfinished_ones_stay_and_the_ledger_says_so(world, sf, capfd):
    from retention import evidence

    sandbox = world
    run, states = _run(policy_dags().retention__stale_leads_mask, MASK_DATE, dry_run=False, cutoff=None)
    assert run.state == "success", states
    mine = sorted(sfid for sfid, r in cache_rows(sandbox, "lead").items()
                  if r["_retention_run"] == f"stale_leads_mask__{MASK_DATE:%Y%m%dT%H%M%S}")
    assert len(mine) > 10
    held, hold_ended, hold_inactive, unfinished, fresh = mine[:5]
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    place_hold(sf, held, "Litigation")
    place_hold(sf, hold_ended, "Ended", EndDate=yesterday)
    place_hold(sf, hold_inactive, "Lifted", IsActive=False)
    with sandbox.store_conn() as conn:
        # As if retained 800 days ago (all but one), with one delete or mask still in flight.
        conn.execute(f"UPDATE cache.lead SET _retained_at = _retained_at - interval '{AGE}' "
                     "WHERE sfid = ANY(%s) AND sfid <> %s", (mine, fresh))
        conn.execute("UPDATE cache.lead SET _action_status = 'submitted' WHERE sfid = %s", (unfinished,))
    others_before = {k: v for k, v in cache_rows(sandbox, "lead").items() if k not in mine}
    contacts_before = _contacts(sandbox)
    expected_purged = sorted(set(mine) - {held, unfinished, fresh})

    purge_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # A dry run first: it counts what would go, and purges and records nothing.
    lead_cache = cache_rows(sandbox, "lead")
    capfd.readouterr()
    run, states = _run(policy_dags().retention_store_purge, purge_at, dry_run=True)
    assert run.state == "success", states
    captured = capfd.readouterr()
    assert (f"DRY RUN (nothing was purged): stale_leads_mask would purge {len(expected_purged)} rows of cache.lead"
            in captured.out + captured.err)
    assert cache_rows(sandbox, "lead") == lead_cache and _purge_rows(sandbox, run.run_id) == {}

    run, states = _run(policy_dags().retention_store_purge, purge_at, dry_run=False)
    assert run.state == "success", states
    assert set(states.values()) == {"success"}

    # The org's holds, all of them, were mirrored into the store.
    mirrored = {r["record_id"]: r for r in store_rows(sandbox, "SELECT * FROM retention.privacy_holds")}
    org_holds = org_rows(sandbox, "SELECT id, referencerecordid FROM org.privacyhold WHERE NOT isdeleted")
    assert {h["referencerecordid"] for h in org_holds} == set(mirrored)
    assert mirrored[held]["is_active"] and not mirrored[hold_inactive]["is_active"]
    assert str(mirrored[hold_ended]["end_date"]) == yesterday

    cache = cache_rows(sandbox, "lead")
    assert {held, unfinished, fresh} <= set(cache)
    assert not set(expected_purged) & set(cache)
    assert {k: v for k, v in cache.items() if k not in mine} == others_before  # copies not past keep_days
    assert _contacts(sandbox) == contacts_before  # nothing there is older than seven years

    rows = _purge_rows(sandbox, run.run_id)
    row = rows["stale_leads_mask"]
    assert row["action"] == "purge" and row["status"] == "succeeded" and row["source"] == "store"
    assert row["acted"] == len(expected_purged) and row["held"] == 1 and row["holds_applied"] == [held]
    assert row["cutoff"] == purge_at - dt.timedelta(days=730)
    assert row["validation"]["unfinished"] == 1 and row["validation"]["table"] == "cache.lead"
    assert row["validation"]["purged_ids_sha256"] == hashlib.sha256("\n".join(expected_purged).encode()).hexdigest()
    assert f"purged {len(expected_purged)} rows of cache.lead" in row["message"]
    purged = store_rows(sandbox, "SELECT sfid, action_status FROM retention.purged_records WHERE ledger_id = %s "
                                 "ORDER BY sfid", (row["id"],))
    assert [p["sfid"] for p in purged] == expected_purged and {p["action_status"] for p in purged} == {"done"}
    assert rows["inactive_contacts"]["acted"] == 0
    with sandbox.store_conn() as conn:
        check = evidence.verify(conn)
    assert check.ok, check.describe()

    # A later mask run does not retain the purged (already masked) leads again.
    with sandbox.store_conn() as conn:
        conn.execute("UPDATE cache.lead SET _action_status = 'done' WHERE sfid = %s", (unfinished,))
    run, states = _run(policy_dags().retention__stale_leads_mask, MASK_AGAIN, dry_run=False, cutoff=None)
    assert run.state == "success", states
    assert not set(expected_purged) & set(cache_rows(sandbox, "lead"))


def test_no_purge_without_a_fresh_copy_of_the_holds(world):
    """The org cannot be read (HTTP 503): mirror_holds fails after its retries, and the purge never runs.
    A purge on holds mirrored too long ago refuses too. Either way the cache and the ledger are unchanged."""
    from retention import purge
    from retention.hooks.store import RetentionStoreHook
    from retention.policy import load_policy
    from tests.conftest import REPO

    sandbox = world
    with sandbox.store_conn() as conn:
        conn.execute(f"UPDATE cache.lead SET _retained_at = _retained_at - interval '{AGE}' WHERE sfid IN "
                     "(SELECT sfid FROM cache.lead WHERE _action_status = 'done' ORDER BY sfid LIMIT 3)")
    before = cache_rows(sandbox, "lead")
    ledger_before = store_rows(sandbox, "SELECT count(*) AS n FROM retention.runs")[0]["n"]

    with sandbox.fault("server_error", status=503):
        run, states = _run(policy_dags().retention_store_purge, dt.datetime.now(dt.UTC).replace(microsecond=0),
                           dry_run=False)
    assert run.state == "failed"
    assert states["mirror_holds"] == "failed"
    assert states["purge__stale_leads_mask"] == "upstream_failed"

    policy = load_policy(REPO / "include" / "policies" / "stale_leads_mask.yaml")
    store = RetentionStoreHook()
    with store.connect() as conn:
        mirrored = conn.execute("SELECT mirrored_at FROM retention.holds_mirror").fetchone()[0]
    with pytest.raises(purge.PurgeError, match="refusing to purge cache.lead"):
        purge.purge(store, policy, as_of=dt.datetime.now(dt.UTC), dag_run_id="manual__stale", started_at=mirrored,
                    now=mirrored + purge.MAX_HOLDS_AGE + dt.timedelta(minutes=1))

    assert cache_rows(sandbox, "lead") == before
    assert store_rows(sandbox, "SELECT count(*) AS n FROM retention.runs")[0]["n"] == ledger_before


def test_without_privacy_center_the_holds_cannot_be_mirrored_and_nothing_is_purged(world):
    """PrivacyHold does not exist for a user without the Privacy Center licence (Object Reference: PrivacyHold):
    the purge cannot know the holds, so it stops with the reason instead of purging blind."""
    from retention import purge
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
    from retention.hooks.store import RetentionStoreHook

    with world.org_settings(privacy_center=False), pytest.raises(purge.PurgeError, match="Privacy Center license"):
        purge.mirror_holds(RetentionStoreHook(), SalesforceBulk2Hook())
