"""One attempt at a crash harness DAG run, in its own process (``python -m tests.crash.child DAG_ID DATE MODE``).

``first``: the DAG run of that logical date, as ``dag.test()`` runs it (every task in this process).
``retry``: what Airflow does after a worker died mid-task: the DAG run and its finished tasks (and their XComs)
stay; the task that was running when the process died is failed by the scheduler and, with retries left, is up
for retry; then the run goes on from there. ``dag.test()`` drives it, told not to clear the run or make a new one.
``clear``: the DAG run cleared and run again from the start (``dag.test()`` as it is: it clears the date's task
instances and replaces the DAG run).
Exit status 0 when the DAG run succeeded, 1 when it failed; -9 when an injected kill (see inject/) took it.
"""

import datetime as dt
import sys
from unittest import mock


def _resume_existing(dag, logical_date):
    """The DAG run as the scheduler leaves it after a dead worker: the task that was running up for retry."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.logical_date == logical_date).one()
        for ti in dr.get_task_instances(session=session):
            if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED):
                ti.state = TaskInstanceState.UP_FOR_RETRY
                ti.end_date = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)  # its retry delay is over
        run_id = dr.run_id

    def existing(*, dag, session, **_):
        dr = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id).one()
        dr.dag = dag  # as create_dagrun sets it
        return dr

    return [mock.patch("airflow.serialization.definitions.dag.SerializedDAG.clear_dags"),
            mock.patch("airflow.models.dagrun.get_or_create_dagrun", existing)]


def main(dag_id: str, when: str, mode: str) -> int:
    from tests.crash.dags import crash_dags

    dag = getattr(crash_dags, dag_id)
    logical_date = dt.datetime.fromisoformat(when)
    patches = _resume_existing(dag, logical_date) if mode == "retry" else []
    for patch in patches:
        patch.start()
    dr = dag.test(logical_date=logical_date, run_after=logical_date, run_conf={"dry_run": False, "cutoff": None})
    print("DAG RUN", dr.state, {ti.task_id: str(ti.state) for ti in dr.get_task_instances()})
    return 0 if dr.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
