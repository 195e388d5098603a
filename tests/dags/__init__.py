"""Airflow's dags folder during the tests.

The policy DAGs take their retries from Airflow's ``[core] default_task_retries`` and ``default_task_retry_delay``
(0 and 300 s unless a deployment sets them); tests/retention/test_config.py shows a deployment's setting reach them.
``dag.test()`` cannot show it: it round-trips the DAG through serialization without the client defaults, so a
task whose retries equal the configured default comes back with the schema's (0). DAGs run with ``dag.test()``
therefore carry, explicitly, what a deployment that retries transient failures would configure.
"""

from __future__ import annotations

import datetime as dt

RETRIES = 2
RETRY_DELAY = dt.timedelta(seconds=1)  # a test should not wait minutes for a retry


def as_deployed(dag):
    """``dag`` with each task retried as a deployment configured for it would (see the module docstring)."""
    for task in dag.tasks:
        task.retries, task.retry_delay = RETRIES, RETRY_DELAY
    return dag
