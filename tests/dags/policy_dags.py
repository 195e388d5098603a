"""The product's policy DAGs, as dags/retention_policies.py builds them, for DAG runs in the tests
(Airflow's dags folder is this directory during the tests)."""

from retention.factory import build_dags

globals().update(build_dags())
