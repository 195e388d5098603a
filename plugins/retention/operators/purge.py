"""The store purge DAG's tasks: mirror the org's privacy holds, then purge each policy's expired copies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from retention import purge

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.policy import Policy


class MirrorHoldsOperator(BaseOperator):
    """Copy every PrivacyHold of the org into ``retention.privacy_holds`` (the purge reads holds there)."""

    ui_color = "#fdf2e3"

    def __init__(self, *, store_conn_id: str = "retention_store", salesforce_conn_id: str = "salesforce_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_conn_id = store_conn_id
        self.salesforce_conn_id = salesforce_conn_id

    def execute(self, context: Context) -> int:
        from retention.hooks.salesforce_bulk import SalesforceBulk2Hook
        from retention.hooks.store import RetentionStoreHook
        from retention.store_setup import SetupError

        store = RetentionStoreHook(self.store_conn_id)
        try:
            store.check_setup()
            count = purge.mirror_holds(store, SalesforceBulk2Hook(self.salesforce_conn_id))
        except (purge.PurgeError, SetupError) as err:  # neither is changed by a retry
            raise AirflowFailException(str(err)) from err
        self.log.info("mirrored %d privacy holds from Salesforce into the store", count)
        return count


class PurgeCacheOperator(BaseOperator):
    """Delete one policy's cache rows past ``retain.keep_days``, except held ones, and record it in the ledger.

    :param policy: the policy whose retained copies are purged.
    """

    ui_color = "#fbe8e8"

    def __init__(self, *, policy: Policy, store_conn_id: str = "retention_store", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.store_conn_id = store_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from retention.hooks.store import RetentionStoreHook

        dag_run = context["dag_run"]
        dry_run = bool(context["params"].get("dry_run"))
        try:
            result = purge.purge(RetentionStoreHook(self.store_conn_id), self.policy,
                                 as_of=context.get("logical_date") or dag_run.run_after, dag_run_id=dag_run.run_id,
                                 started_at=dag_run.start_date, dry_run=dry_run)
        except purge.PurgeError as err:
            raise AirflowFailException(str(err)) from err
        if dry_run:
            self.log.info("DRY RUN (nothing was purged): %s would purge %d rows of cache.%s retained before %s; "
                          "%d held (%s) and %d unfinished would stay", self.policy.id, result.purged,
                          self.policy.retain.table, result.purge_before.isoformat(), len(result.held_ids),
                          ", ".join(result.held_ids) or "none", result.unfinished)
            return {"dry_run": True, "would_purge": result.purged, "held": len(result.held_ids),
                    "unfinished": result.unfinished}
        self.log.info("%s: purged %d rows of cache.%s retained before %s; kept %d held (%s), %d unfinished; "
                      "ledger row %d", self.policy.id, result.purged, self.policy.retain.table,
                      result.purge_before.isoformat(), len(result.held_ids), ", ".join(result.held_ids) or "none",
                      result.unfinished, result.ledger_id)
        return {"ledger_id": result.ledger_id, "purged": result.purged, "held": len(result.held_ids),
                "unfinished": result.unfinished, "remaining": result.remaining}
