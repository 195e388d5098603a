"""``make demo``: bring the sandbox up, seed the org, let Heroku Connect mirror it, run every example
retention policy as a real Airflow DAG run, print a summary per policy, and stop what was started.

Counts come through the same paths the product uses: the org through simple-salesforce over HTTPS,
the mirror through SQL on the store's ``salesforce`` schema, sync state from the Connect API, and each
run's numbers from the retention ledger it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import requests

from sandbox import __main__ as cli
from sandbox.config import REPO, Settings
from sandbox.objects import OBJECTS


def _register(env: dict[str, str]) -> None:
    """Put the token's Heroku user on the Connect add-on's access list, once, as a data team does:
    ``python -m retention connect-register`` (no user is on it by default)."""
    path = os.pathsep.join(filter(None, (str(REPO / "plugins"), os.environ.get("PYTHONPATH"))))
    done = subprocess.run([sys.executable, "-m", "retention", "connect-register"], capture_output=True, text=True,
                          env={**os.environ, **env, **airflow_env(env), "PYTHONPATH": path})
    if done.returncode != 0:
        raise SystemExit(f"python -m retention connect-register failed:\n{done.stdout}{done.stderr}")
    print(done.stdout.strip())


def _wait_synced(env: dict[str, str], since: dt.datetime, timeout: float) -> dict[str, dict]:
    """Poll the Connect API until every mapping is DATA_SYNCED as of a poll made after ``since``: a mapping's
    state is its last poll's, so only a later poll says the seeded records are in. Returns the mappings."""
    url = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}"
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    deadline = time.monotonic() + timeout

    def polled_since(m: dict) -> bool:
        last = (m.get("times") or {}).get("sf_poll")
        return bool(last) and dt.datetime.fromisoformat(last) > since

    while True:
        body = requests.get(url, params={"deep": "true"}, headers=headers, verify=env["REQUESTS_CA_BUNDLE"],
                            timeout=30).json()
        mappings = {m["object_name"]: m for m in body["mappings"]}
        if all(m["state"] == "DATA_SYNCED" and polled_since(m) for m in mappings.values()):
            return mappings
        if time.monotonic() > deadline:
            raise SystemExit(f"Connect mirror not synced after {timeout:.0f}s: "
                             + ", ".join(f"{k}={m['state']}" for k, m in mappings.items()))
        time.sleep(0.5)


def _reset_store(url: str) -> None:
    """A demo starts from an empty retention store (the org is re-seeded with the same ids each time)."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("DROP SCHEMA IF EXISTS cache, retention, retention_staging CASCADE")


def airflow_env(env: dict[str, str]) -> dict[str, str]:
    """Airflow on the sandbox: metadata in its Postgres, our dags folder, no examples, quiet logs."""
    return {
        "AIRFLOW_HOME": str(REPO / ".airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


@contextlib.contextmanager
def _output_to(path: Path):
    """Send everything written to stdout/stderr (Airflow's task logs included) to a file meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def run_policies(env: dict[str, str], log: Path) -> list[dict]:
    """One real DAG run per example policy (``dag.test()``, the scheduler's code path for one run)."""
    airflow = airflow_env(env)
    os.environ.update(airflow)
    migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                             capture_output=True, text=True, env={**os.environ})
    if migrate.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
    from retention.factory import PURGE_DAG_ID, build_dags
    from retention.settings_loader import apply_settings, load_settings

    apply_settings(load_settings(REPO / "airflow_settings.yaml"))  # airflow pools import
    from retention import preflight
    from retention.policy import load_policies

    report = preflight.run(load_policies()[0])
    print(f"  preflight ({len(report.checks)} checks; `python -m retention preflight` prints them): "
          f"{report.table().splitlines()[-1]}", flush=True)
    logical_date = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    rows = []
    dags = build_dags()
    purge_dag = dags.pop(PURGE_DAG_ID, None)
    for dag_id, dag in dags.items():
        print(f"  running {dag_id} ...", flush=True)
        started = time.monotonic()
        with _output_to(log):
            run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None})
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        rows.append({"policy": dag_id.removeprefix("retention__"), "state": str(run.state), "states": states,
                     "seconds": time.monotonic() - started})
    import psycopg

    with psycopg.connect(env["RETENTION_STORE_URL"]) as conn:
        for row in rows:
            found = conn.execute(
                "SELECT eligible, held, retained, acted, failed, action, status, refused, blocked, cascade "
                "FROM retention.runs WHERE policy_id = %s ORDER BY id DESC LIMIT 1", (row["policy"],)).fetchone()
            row["ledger"] = found
    if purge_dag is not None:
        print(f"  running {PURGE_DAG_ID} ...", flush=True)
        with _output_to(log):
            run = purge_dag.test(logical_date=logical_date)
        with psycopg.connect(env["RETENTION_STORE_URL"]) as conn:
            purged = conn.execute("SELECT policy_id, message FROM retention.runs WHERE dag_run_id = %s "
                                  "AND action = 'purge' ORDER BY policy_id", (run.run_id,)).fetchall()
        rows.append({"purge": PURGE_DAG_ID, "state": str(run.state), "messages": purged})
    return rows


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'policy':<26}{'eligible':>9}{'held':>6}{'retained':>10}  {'acted':<16}{'refused':>8}{'failed':>7}  "
          f"{'validation':<11}{'time':>6}")
    for row in rows:
        if "purge" in row:
            print(f"\n{row['purge']}: run {row['state']}")
            for policy_id, message in row["messages"]:
                print(f"  {policy_id:<24}{message}")
            continue
        ledger = row["ledger"]
        validation = {"success": "passed", "failed": "FAILED", "upstream_failed": "-", "skipped": "-"}.get(
            str(row["states"].get("validate_row_counts")), "-")
        if ledger and row["state"] == "success":
            eligible, held, retained, acted, failed, action, _status, refused, blocked, cascade = ledger
            verb = {"delete": "deleted", "hard_delete": "hard-deleted", "mask": "masked"}[action]
            print(f"{row['policy']:<26}{eligible:>9}{held:>6}{retained or 0:>10}  {f'{acted} {verb}':<16}"
                  f"{refused or 0:>8}{failed:>7}  {validation:<11}{row['seconds']:>5.0f}s")
            for child, info in (cascade or {}).items():
                print(f"{'':<28}with them {info.get('done', 0)} {child} records, retained in cache.{info['table']}")
            if blocked:
                print(f"{'':<28}{blocked} kept back: a delete would take children the policy does not retain")
        else:
            failed_tasks = [t for t, s in row["states"].items() if str(s) == "failed"]
            print(f"{row['policy']:<26}  run {row['state']} at {', '.join(failed_tasks) or '?'}  "
                  f"{validation:<11}{row['seconds']:>5.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    state = cli.read_state(settings)
    already_running = bool(state and cli._pid_alive(state["pid"]))
    started = time.monotonic()
    failures: list[dict] = []
    if not already_running and cli.cmd_up(settings, None) != 0:
        return 1
    try:
        state = cli.read_state(settings)
        env = cli.env_vars(settings, state["base_url"])
        os.environ.update(env)
        _reset_store(env["RETENTION_STORE_URL"])  # then the admin's step again, on the empty store
        cli.setup_store(cli.postgres.Postgres(state["base_url"], embedded=True))
        print(f"\nSeeding the org ({args.contacts} contacts and related records)...")
        cli.cmd_seed(settings, SimpleNamespace(reset=True, contacts=args.contacts, seed=42))
        seeded_at = dt.datetime.now(dt.UTC)
        _register(env)
        print("Waiting for Heroku Connect to mirror the org...")
        mappings = _wait_synced(env, seeded_at, timeout=300)

        from simple_salesforce import Salesforce

        from sandbox.postgres import Postgres

        sf = Salesforce(username=settings.username, consumer_key=settings.consumer_key,
                        privatekey_file=env["SALESFORCE_PRIVATE_KEY_FILE"], domain=settings.login_domain,
                        version=env["SALESFORCE_API_VERSION"])
        mirror = cli._counts(Postgres(state["base_url"], embedded=True).store_url(), "salesforce")
        print(f"\n{'object':<20}{'org (SOQL)':>12}{'mirror (SQL)':>14}  Connect mapping state")
        for obj in OBJECTS.values():
            in_org = sf.query(f"SELECT COUNT() FROM {obj.name}")["totalSize"]
            state = mappings[obj.name]["state"] if obj.name in mappings else "not mapped"
            print(f"{obj.name:<20}{in_org:>12}{mirror.get(obj.name, 0):>14}  {state}")
        bulk = sf.bulk2.Contact.query("SELECT Id FROM Contact", wait=1)
        fetched = sum(max(page.count("\n") - 1, 0) for page in bulk)
        print(f"\nBulk API 2.0 query of all contacts returned {fetched} rows.")

        log = settings.home / "demo-airflow.log"
        print(f"\nRunning each example policy as an Airflow DAG run (task logs: {log}) ...")
        rows = run_policies(env, log)
        print_summary(rows)
        failures = [r for r in rows if r["state"] != "success"]
    finally:
        if "airflow.settings" in sys.modules:
            # Close Airflow's pooled connections while their Postgres still runs (else its exit hook complains).
            sys.modules["airflow.settings"].dispose_orm()
        if not already_running and not args.keep:
            print()
            cli.cmd_down(settings, None)
    print(f"Demo finished in {time.monotonic() - started:.0f}s.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
