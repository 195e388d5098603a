"""The crash harness's policy DAGs: the policies in ``CRASH_POLICIES_DIR``, built as dags/retention_policies.py
builds them and retried as a deployment configures (Airflow's dags folder in the harness's child processes)."""

import os

from retention.factory import build_dags
from tests.dags import as_deployed

if os.environ.get("CRASH_POLICIES_DIR"):
    globals().update({dag_id: as_deployed(dag) for dag_id, dag in build_dags(os.environ["CRASH_POLICIES_DIR"]).items()})
