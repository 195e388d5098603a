"""What every pipeline operator shares: the policy it runs, the run it belongs to, the hooks it uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException, BaseOperator

from retention.steps.run import RetentionError, Run, make_run

if TYPE_CHECKING:
    from airflow.sdk import Context

    from retention.encryption import Keyring
    from retention.policy import Policy

HASH_KEY_ID = "retention_hash_key"


class PolicyOperator(BaseOperator):
    """Base of the pipeline's operators.

    :param policy: the retention policy this task runs.
    :param store_conn_id: Airflow connection of the retention store (Postgres).
    :param salesforce_conn_id: Airflow connection of the Salesforce org.
    """

    ui_color = "#e8f1fb"
    # Dry runs stop after extract: the later steps change the store or the org.
    runs_in_dry_run = False

    def __init__(self, *, policy: Policy, store_conn_id: str = "retention_store",
                 salesforce_conn_id: str = "salesforce_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.store_conn_id = store_conn_id
        self.salesforce_conn_id = salesforce_conn_id

    def run(self, context: Context) -> Run:
        dag_run = context["dag_run"]
        return make_run(
            self.policy, logical_date=context.get("logical_date"), run_after=dag_run.run_after,
            dag_run_id=dag_run.run_id, params=context["params"], started_at=dag_run.start_date,
        )

    def store(self):
        from retention.hooks.store import RetentionStoreHook

        return RetentionStoreHook(self.store_conn_id)

    def salesforce(self):
        from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

        return SalesforceBulk2Hook(self.salesforce_conn_id)

    def hash_key(self) -> bytes | None:
        """The keyed-hash secret: Airflow connection ``retention_hash_key`` (password), else the variable."""
        from airflow.sdk import BaseHook, Variable

        try:
            secret = BaseHook.get_connection(HASH_KEY_ID).password
        except Exception:
            secret = Variable.get(HASH_KEY_ID, default=None)
        return secret.encode() if secret else None

    def encryption_keyring(self) -> Keyring:
        """The key of encrypted retained fields: Airflow connection ``retention_encryption_key`` (password, and
        extra ``previous_keys`` during a rotation). A missing or unusable key stops the run: no retry finds one."""
        from airflow.sdk import BaseHook

        from retention.encryption import KEY_CONN_ID, EncryptionError, Keyring

        try:
            conn = BaseHook.get_connection(KEY_CONN_ID)
        except Exception as err:  # AirflowNotFoundException, or a secrets backend's own error
            raise RetentionError(f"policy {self.policy.id} encrypts retained fields (retain.encrypt) but the Airflow "
                                 f"connection '{KEY_CONN_ID}' cannot be read ({type(err).__name__}); set it, "
                                 "password = a base64 key (openssl rand -base64 32). Nothing was touched") from None
        try:
            return Keyring.from_connection(conn.password, conn.extra_dejson)
        except EncryptionError as err:
            raise RetentionError(f"policy {self.policy.id}: {err}. Nothing was touched") from None

    def execute(self, context: Context) -> Any:
        run = self.run(context)
        if run.dry_run and not self.runs_in_dry_run:
            raise AirflowSkipException("dry run: nothing is changed")
        try:
            return self.execute_run(context, run)
        except RetentionError as err:
            # A stop with a reason (guard, validation, configuration): retrying cannot change it.
            raise AirflowFailException(str(err)) from err

    def execute_run(self, context: Context, run: Run) -> Any:
        raise NotImplementedError


class ChunkOperator(PolicyOperator):
    """Base of the operators mapped over a run's chunks (``delete_or_mask``, ``verify_in_salesforce``).

    :param chunk: the chunk (``Chunk.to_xcom()``) this task instance takes; None: every record of the run.
    """

    def __init__(self, *, chunk: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk

    def this_chunk(self):
        from retention.steps.results import Chunk

        return Chunk.from_xcom(self.chunk) if self.chunk else Chunk(index=0)
