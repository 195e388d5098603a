"""The run: its key (policy id + logical date) and its cutoff, decided once and the same on every retry.

A run is identified by its **run key**: every table and row it writes carries it, so a retry or a re-run of the
same date finds its own work instead of duplicating it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from retention.hooks.store import STAGING_SCHEMA

if TYPE_CHECKING:
    from retention.policy import Policy

UTC = dt.UTC


class RetentionError(Exception):
    """A run must stop: the message says why, with the numbers; ``details`` carries them for alerts."""

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class Run:
    """One policy run: what it decides and where its working tables are."""

    policy_id: str
    run_key: str
    cutoff: dt.datetime
    dag_run_id: str
    dry_run: bool
    started_at: dt.datetime
    # The UTC day of the run's logical date: relative date literals in ``where`` (TODAY, LAST_N_DAYS:n) count from
    # it, in SOQL and in SQL alike, so a run and its replay (a backfill, a retry days later) decide the same.
    # Salesforce itself would count them in the API user's time zone from the moment of the query.
    today: dt.date

    @property
    def staging(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key)

    @property
    def sent(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key + "__sent")

    @property
    def subset(self) -> sql.Identifier:
        return sql.Identifier(STAGING_SCHEMA, self.run_key + "__subset")

    def cutoff_value(self, field_type: str) -> dt.date | dt.datetime:
        """The cutoff as Postgres compares it with a staged or mirrored column (naive UTC for datetimes)."""
        return self.cutoff.date() if field_type == "date" else self.cutoff.replace(tzinfo=None)

    def soql_cutoff(self, field_type: str) -> str:
        """The cutoff as a SOQL literal for a date or datetime field."""
        return self.cutoff.strftime("%Y-%m-%d" if field_type == "date" else "%Y-%m-%dT%H:%M:%SZ")


def make_run(policy: Policy, *, logical_date: dt.datetime | None, run_after: dt.datetime, dag_run_id: str,
             params: dict[str, Any], started_at: dt.datetime | None = None) -> Run:
    """The run's cutoff comes from its logical date (or run_after for manual runs), or the ``cutoff`` param."""
    anchor = utc(logical_date or run_after)
    override = params.get("cutoff")
    if override:
        cutoff = _parse_cutoff(str(override))
        anchor = cutoff + dt.timedelta(days=policy.select.older_than_days)
    else:
        cutoff = anchor - dt.timedelta(days=policy.select.older_than_days)
    run_key = f"{policy.id}__{anchor:%Y%m%dT%H%M%S}"
    return Run(policy.id, run_key, cutoff, dag_run_id, bool(params.get("dry_run")), started_at or dt.datetime.now(UTC),
               anchor.date())


def utc(moment: dt.datetime) -> dt.datetime:
    """A plain aware UTC datetime (naive is read as UTC): pendulum drops the zone on subtraction, and a naive
    cutoff would be read in the store session's time zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return dt.datetime.fromtimestamp(moment.timestamp(), UTC)


def _parse_cutoff(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RetentionError(f"param cutoff {text!r} is not an ISO date or datetime") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def guard(policy: Policy, eligible: int) -> None:
    """``guards.max_records_per_run``: a run over it stops before anything is touched."""
    limit = policy.guards.max_records_per_run
    if eligible > limit:
        raise RetentionError(
            f"{eligible} records are eligible, more than guards.max_records_per_run ({limit}); nothing was "
            "touched. Raise the guard in the policy if this is expected."
        )


def active_holds(sf) -> set[str]:
    """Ids of the records under a hold in force in the org now. Without the holds a run could touch a held record,
    so an org without PrivacyHold for this user stops the run (RetentionError, naming the licence)."""
    from retention import holds

    try:
        return holds.in_org(sf)
    except holds.HoldsUnavailable as err:
        raise RetentionError(str(err)) from err


class PolicyBusy(Exception):
    """Another DAG run of the policy is at work: this one waits its turn (a retry, or a later poke)."""


def claim(store, run: Run, *, still_running, wait: float = 3600, poll: float = 5.0) -> None:
    """Make ``run`` the one run of its policy at work, waiting (up to ``wait`` seconds) while another DAG run of the
    policy holds it. ``still_running(dag_run_id)`` asks Airflow whether the holder's DAG run is running or queued;
    a holder that ended (failed, or cleared and never re-run) is taken over. A retry of the same DAG run keeps it."""
    import time

    deadline = time.monotonic() + wait
    while True:
        with store.connect() as conn:
            held = conn.execute("SELECT run_key, dag_run_id, claimed_at FROM retention.active_runs "
                                "WHERE policy_id = %s FOR UPDATE", (run.policy_id,)).fetchone()
            if held is None or held[1] == run.dag_run_id or not still_running(held[1]):
                conn.execute("INSERT INTO retention.active_runs (policy_id, run_key, dag_run_id) VALUES (%s, %s, %s) "
                             "ON CONFLICT (policy_id) DO UPDATE SET run_key = excluded.run_key, dag_run_id = "
                             "excluded.dag_run_id, claimed_at = now()", (run.policy_id, run.run_key, run.dag_run_id))
                return
        if time.monotonic() > deadline:
            raise PolicyBusy(f"policy {run.policy_id} is being run by DAG run {held[1]} ({held[0]}, since "
                             f"{held[2]:%Y-%m-%d %H:%M:%S %Z}); {run.dag_run_id} waited {wait:.0f}s for its turn")
        time.sleep(poll)


def release(store, run: Run) -> None:
    """The run is done with the policy (its ledger row written, or a dry run's preview shown)."""
    with store.connect() as conn:
        conn.execute("DELETE FROM retention.active_runs WHERE policy_id = %s AND dag_run_id = %s",
                     (run.policy_id, run.dag_run_id))
