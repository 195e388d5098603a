"""The product's policy DAGs, as dags/retention_policies.py builds them, for DAG runs in the tests
(Airflow's dags folder is this directory during the tests)."""

from retention.factory import build_dags
from tests.dags import as_deployed

globals().update({dag_id: as_deployed(dag) for dag_id, dag in build_dags().items()})
