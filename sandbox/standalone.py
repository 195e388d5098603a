"""``make airflow``: Airflow standalone (API server with the UI, scheduler, dag processor, triggerer) on
the sandbox, with every retention policy visible as a DAG.

Starts the sandbox if it is not running, points Airflow at its Postgres (metadata in the ``airflow``
database) and at the sandbox's connections (``AIRFLOW_CONN_*``), applies airflow_settings.yaml (the
``salesforce_api`` pool, through ``airflow pools import``), puts the Heroku Connect token's user on the
add-on's access list (``python -m retention connect-register``), and runs ``airflow standalone`` in the
foreground until Ctrl-C. The admin password is printed by Airflow and
kept in ``.airflow/simple_auth_manager_passwords.json.generated``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sandbox import __main__ as cli
from sandbox.config import Settings
from sandbox.demo import airflow_env


def main() -> int:
    settings = Settings.from_env()
    state = cli.read_state(settings)
    if not (state and cli._pid_alive(state["pid"])) and cli.cmd_up(settings, None) != 0:
        return 1
    state = cli.read_state(settings)
    env = {**os.environ, **cli.env_vars(settings, state["base_url"])}
    env.update(airflow_env(env))
    env.pop("AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY", None)  # Airflow's own delay, as in production
    bin_dir = str(Path(sys.executable).parent)
    # standalone starts its children as `airflow <command>` from PATH.
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    airflow = str(Path(bin_dir) / "airflow")
    apply_settings = [sys.executable, "-m", "retention.settings_loader", "airflow_settings.yaml"]
    # The Connect token's user joins the add-on's access list once, as a data team does (idempotent).
    register = [sys.executable, "-m", "retention", "connect-register"]
    for step in ([airflow, "db", "migrate"], apply_settings, register):
        done = subprocess.run(step, env=env)
        if done.returncode != 0:
            return done.returncode
    print("\nStarting Airflow standalone on http://localhost:8080 (Ctrl-C stops it; the sandbox keeps running "
          "until 'python -m sandbox down')\n", flush=True)
    # Its own process group: on Ctrl-C or SIGTERM the whole group (scheduler, API server, workers) stops,
    # where signalling standalone alone would leave its children running.
    proc = subprocess.Popen([airflow, "standalone"], env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_standalone(proc)
        return 0


def stop_standalone(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop ``airflow standalone`` started in a session of its own: SIGTERM to its whole process group (each
    component stops on it within seconds; SIGINT left them running past 40 s), SIGKILL whatever is left after
    ``timeout``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
