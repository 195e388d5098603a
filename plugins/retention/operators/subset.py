"""subset: project and transform the retained fields (inside Postgres, set-based)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retention import pipeline
from retention.operators.base import PolicyOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

HASH_KEY_ID = "retention_hash_key"


def hash_key() -> bytes | None:
    """The keyed-hash secret: Airflow connection ``retention_hash_key`` (password), else the variable."""
    from airflow.sdk import BaseHook, Variable

    try:
        secret = BaseHook.get_connection(HASH_KEY_ID).password
    except Exception:
        secret = Variable.get(HASH_KEY_ID, default=None)
    return secret.encode() if secret else None


class SubsetOperator(PolicyOperator):
    """Write the run's retained subset table from its staging table."""

    def execute_run(self, context: Context, run: pipeline.Run) -> int:
        needs_key = any(t.kind == "hash" for retain in (self.policy.retain, *(c.retain for c in self.policy.cascade))
                        for t in retain.fields.values())
        rows = pipeline.subset(self.store(), self.policy, run, hash_key() if needs_key else None)
        self.log.info("%s: %d rows in the retained subset", run.run_key, rows)
        return rows
