"""One Airflow DAG per retention policy.

The public surface is ``build_dag(policy)`` and ``build_dags(folder)``; the DAG file calls the latter.
A policy file that does not load becomes an import error of the DAG file that names the policy file,
the key and the reason, while every other policy's DAG still loads.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk import DAG, Param

from retention import config
from retention.policy import Policy, load_policies

if TYPE_CHECKING:
    from airflow.sdk.bases.operator import BaseOperator

# Every task that calls Salesforce takes a slot: one API budget shared by all policies.
SALESFORCE_POOL = "salesforce_api"
# Transient failures (API limits, network, a busy store) are retried with backoff, as often and as soon as
# Airflow's [core] default_task_retries and default_task_retry_delay say (a deployment sets them, not us);
# validation failures and guards never retry (AirflowFailException).
DEFAULT_ARGS = {
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
}


def _default_args(**args) -> dict:
    """DEFAULT_ARGS with the deprecated RETENTION_* retry variables, read when the DAGs are built."""
    return {**DEFAULT_ARGS, **config.deprecated_retry_args(), **args}


def _doc(policy: Policy) -> str:
    """The DAG's documentation in the UI: what the policy selects, keeps and does."""
    sel = policy.select
    lines = [
        f"### {policy.description}",
        "",
        f"**Owner** {policy.owner} · **Object** `{policy.object}` · **Source** {policy.source} · "
        f"**Policy file** `{policy.path.name if policy.path else '?'}` (sha256 `{policy.source_hash[:12]}`)",
        "",
        "**Selects** records whose `{}` is more than {} days before the run's logical date{}{}.".format(
            sel.date_field, sel.older_than_days, f", where `{sel.where}`" if sel.where else "",
            ", except those under an active privacy hold" if sel.exclude_privacy_holds else ""),
        "",
        f"**Keeps** in `cache.{policy.retain.table}` (with `Id` as `sfid`):",
        "",
        "| field | kept as |",
        "| --- | --- |",
        *(f"| `{name}` | {t}{', encrypted' if name in policy.retain.encrypt else ''} |"
          for name, t in policy.retain.fields.items()),
        "",
    ]
    if policy.action == "mask":
        lines += ["**Then masks** the originals in Salesforce:", "", "| field | strategy |", "| --- | --- |",
                  *(f"| `{name}` | {m.strategy} |" for name, m in policy.mask.items()), ""]
    else:
        verb = "permanently deletes (hard delete)" if policy.action == "hard_delete" else "deletes"
        lines += [f"**Then {verb}** the originals in Salesforce, once the retained copy is validated.", ""]
    lines += [f"At most {policy.guards.max_records_per_run} records a run; more fails the run before anything "
              "is touched. Trigger with `dry_run` for a preview that changes nothing."]
    return "\n".join(lines)


def _timetable(policy: Policy):
    """The policy's schedule as an explicit timetable (UTC), never a string left to Airflow's defaults."""
    from retention.timetables import timetable_for

    return timetable_for(policy.schedule)


def build_dag(policy: Policy) -> DAG:
    """The DAG of one policy: wait_for_connect_sync → extract → subset → load_to_cache →
    validate_row_counts → delete_or_mask (mapped over chunks) → verify_in_salesforce (mapped) →
    confirm_and_report."""
    from retention.alerts import RetentionAlertNotifier, settings_for
    from retention.operators.confirm_and_report import ConfirmAndReportOperator
    from retention.operators.delete_or_mask import DeleteOrMaskOperator
    from retention.operators.extract import ExtractOperator
    from retention.operators.load_to_cache import LoadToCacheOperator
    from retention.operators.subset import SubsetOperator
    from retention.operators.validate_row_counts import ValidateRowCountsOperator
    from retention.operators.verify_in_salesforce import VerifyInSalesforceOperator
    from retention.sensors.connect_sync import ConnectSyncSensor
    from retention.steps.results import Task

    alerts = settings_for(policy)
    on_failure = [RetentionAlertNotifier(policy_id=policy.id, alerts=alerts)] if alerts else []

    with DAG(
        dag_id=policy.dag_id,
        description=policy.description,
        schedule=_timetable(policy),
        start_date=dt.datetime.combine(policy.start_date, dt.time(), tzinfo=dt.UTC),
        catchup=policy.catchup,
        max_active_runs=1,
        tags=["retention", policy.action, policy.object, policy.source],
        doc_md=_doc(policy),
        default_args=_default_args(owner=policy.owner, on_failure_callback=on_failure),
        params={
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Preview only: counts and a sample of what would be retained; "
                                         "nothing is changed in the store or in Salesforce."),
            "cutoff": Param(None, type=["null", "string"], title="Cutoff override",
                            description="ISO date or datetime; records older than this are eligible. Default: "
                                        f"the logical date minus {policy.select.older_than_days} days."),
        },
    ) as dag:
        common = {"policy": policy}
        steps: list[BaseOperator] = []
        if policy.source == "heroku_connect":
            # Every other object the run reads from the mirror must be current too (privacy holds, the filter's
            # sub-selects, cascade children), and every column it reads mapped: a mapping without one fails the
            # sensor, naming it.
            holds = tuple(sorted(policy.related_fields()))
            required = {policy.object: sorted(policy.referenced_fields()),
                        **{name: sorted(fields) for name, fields in policy.related_fields().items()}}
            steps.append(ConnectSyncSensor(task_id=Task.WAIT_FOR_CONNECT_SYNC.value, object_name=policy.object,
                                           also_wait_for=holds, required_fields=required))
        validate = ValidateRowCountsOperator(task_id=Task.VALIDATE.value, pool=SALESFORCE_POOL, **common)
        # One task instance per chunk of the run's records (guards.chunk_records), as many at once as the
        # salesforce_api pool lets in, on whichever workers are free.
        chunks = validate.output
        steps += [
            ExtractOperator(task_id=Task.EXTRACT.value, pool=SALESFORCE_POOL, **common),
            SubsetOperator(task_id=Task.SUBSET.value, **common),
            LoadToCacheOperator(task_id=Task.LOAD_TO_CACHE.value, **common),
            validate,
            DeleteOrMaskOperator.partial(task_id=Task.ACT.value, pool=SALESFORCE_POOL, **common).expand(chunk=chunks),
            VerifyInSalesforceOperator.partial(task_id=Task.VERIFY.value, pool=SALESFORCE_POOL, **common)
            .expand(chunk=chunks),
            ConfirmAndReportOperator(task_id=Task.CONFIRM.value, pool=SALESFORCE_POOL, **common),
        ]
        for upstream, downstream in zip(steps, steps[1:], strict=False):
            upstream >> downstream
    return dag


PURGE_DAG_ID = "retention_store_purge"


def build_purge_dag(policies: list[Policy]) -> DAG:
    """The maintenance DAG: mirror the org's privacy holds into the store, then purge each policy's cache
    rows past ``retain.keep_days`` (one task per policy that sets it), daily at 03:00 UTC."""
    from airflow.timetables.trigger import CronTriggerTimetable

    from retention.alerts import RetentionAlertNotifier, settings_for
    from retention.operators.purge import MirrorHoldsOperator, PurgeCacheOperator

    keeping = [p for p in policies if p.retain.keep_days is not None]
    alerts = settings_for(None)
    on_failure = [RetentionAlertNotifier(policy_id="store purge", alerts=alerts)] if alerts else []
    doc = "\n".join([
        "### Store purge",
        "",
        "Deletes retained copies older than their policy's `retain.keep_days` from `cache`, never a copy of a "
        "record under an active privacy hold (the org's holds are mirrored into `retention.privacy_holds` "
        "first) and never one whose delete or mask has not finished. Each purge is a row in the ledger; the "
        "purged ids are in `retention.purged_records`. Trigger with `dry_run` to count what would be purged.",
        "",
        "| policy | table | keep_days |",
        "| --- | --- | --- |",
        *(f"| {p.id} | `cache.{p.retain.table}` | {p.retain.keep_days} |" for p in keeping),
    ])
    with DAG(
        dag_id=PURGE_DAG_ID,
        description="Purge retained copies past their policy's keep_days (held ones stay)",
        schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
        start_date=dt.datetime.combine(min(p.start_date for p in keeping), dt.time(), tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["retention", "maintenance"],
        doc_md=doc,
        default_args=_default_args(owner="retention", on_failure_callback=on_failure),
        params={"dry_run": Param(False, type="boolean", title="Dry run",
                                 description="Count what would be purged; nothing is deleted or recorded.")},
    ) as dag:
        holds = MirrorHoldsOperator(task_id="mirror_holds", pool=SALESFORCE_POOL)
        for policy in keeping:
            holds >> PurgeCacheOperator(task_id=f"purge__{policy.id}", policy=policy)
    return dag


class PolicyLoadError(Exception):
    """A policy file did not load; the message names the file, the key and the reason."""


class BrokenPolicyDag(DAG):
    """Stands in for a policy file that did not load. Airflow validates each DAG as it bags it and records
    a failure as an import error of the DAG file, then goes on with the file's other DAGs: so the error
    names the policy file, key and reason, and the other policies still load."""

    def validate(self):
        raise PolicyLoadError(self.doc_md or "policy file did not load")


def build_dags(folder: Path | str | None = None) -> dict[str, DAG]:
    """Every policy's DAG by dag id, the store purge DAG when a policy sets ``retain.keep_days``, and a
    ``BrokenPolicyDag`` for each file that failed to load."""
    from retention.alerts import AlertSettingsError, global_settings

    policies, errors = load_policies(folder)
    dags: dict[str, DAG] = {p.dag_id: build_dag(p) for p in policies}
    if any(p.retain.keep_days is not None for p in policies):
        dags[PURGE_DAG_ID] = build_purge_dag(policies)
    for path, error in errors.items():
        dag_id = f"retention__broken__{Path(path).stem.lower()}"
        dags[dag_id] = BrokenPolicyDag(dag_id=dag_id, schedule=None, doc_md=str(error))
    try:
        global_settings()
    except AlertSettingsError as err:
        # The DAGs load without the global alerts; the import error says why no alert would be sent.
        dags["retention__broken__alert_settings"] = BrokenPolicyDag(
            dag_id="retention__broken__alert_settings", schedule=None,
            doc_md=f"{err}; policies without their own alerts: key send no alerts until it is fixed")
    return dags
