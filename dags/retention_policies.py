"""Airflow DAGs: one per retention policy in include/policies (or [retention] policies_dir).

A policy file that does not load shows as an import error of this file naming the policy file, the
key and the reason; the other policies' DAGs still load.
"""

from retention.factory import build_dags

globals().update(build_dags())
