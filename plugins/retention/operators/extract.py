"""extract: check the policy against the object's describe, then stage the eligible, non-held records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class ExtractOperator(PolicyOperator):
    """Stage this run's eligible records in ``retention_staging`` (dry runs: preview and roll back)."""

    runs_in_dry_run = True

    def execute_run(self, context: Context, run: pipeline.Run) -> dict[str, Any]:
        from retention.policy import check_against_describe

        sf = self.salesforce()
        describe = sf.describe_object(self.policy.object)
        others = {name: sf.describe_or_none(name) for name in self.policy.related_fields()}
        problems = check_against_describe(self.policy, describe, others)
        if problems:
            raise pipeline.RetentionError(
                f"policy {self.policy.id} does not fit {self.policy.object} in Salesforce: " + "; ".join(problems))
        store = self.store()
        store.ensure_schema()
        if self.policy.source == "salesforce_api":
            out = pipeline.extract_from_salesforce(store, sf, self.policy, run, describe, others)
        else:
            out = pipeline.extract_from_mirror(store, self.policy, run, describe, others, sf)
        out["field_types"] = {n: t for n, t in pipeline.field_types(describe).items()
                              if n in set(pipeline.staged_fields(self.policy))}
        out["cutoff"] = run.cutoff.isoformat()
        out["run_key"] = run.run_key
        self.log.info("%s: cutoff %s, %d eligible, %d held by privacy holds, %d already retained and acted on, "
                      "%d staged", run.run_key, run.cutoff.isoformat(), out["eligible"], out["held"],
                      out.get("done", 0), out["staged"])
        for child in out.get("children", []):
            self.log.info("%s: %d %s records go with their parents and are staged for cache.%s", run.run_key,
                          child["staged"], child["object"], child["table"])
        if out.get("blocked"):
            first, reason = next(iter(out["blocked"].items()))
            self.log.warning("%d records are kept back: a delete would take children the policy does not retain "
                             "(e.g. %s: %s)", len(out["blocked"]), first, reason)
        if run.dry_run:
            self.log.info("DRY RUN preview (nothing was changed): %d would be retained then %s; sample of the "
                          "retained rows:\n%s", out["eligible"], self.policy.action,
                          "\n".join(str(r) for r in out["preview"]))
        return out
