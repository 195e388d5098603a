"""Command line: ``python -m retention evidence verify [--head HASH]``,
``python -m retention evidence export --policy ID --since DATE [--out DIR]``,
``python -m retention connect-register [--conn-id heroku_connect_default]``,
``python -m retention preflight [--policies DIR]``,
``python -m retention decrypt --policy ID [--sfid ID ...] [--policies DIR]`` and
``python -m retention store-setup [--print]``.

The store is found from ``--store-url``, else ``RETENTION_STORE_URL``, else the Airflow connection
``retention_store`` given as ``AIRFLOW_CONN_RETENTION_STORE`` (what ``python -m sandbox env`` exports).
``connect-register`` adds the Heroku user of the Airflow connection's token to the access list of the
app's Heroku Connect add-on, once per user (no user is on it by default); it reads the connection as
Airflow does (``AIRFLOW_CONN_*`` or the metadata database). ``preflight`` checks, before a first real run,
everything the policies will meet in the org, the store, Heroku Connect and Airflow (see retention.preflight),
prints what is ready and what to fix, and exits 1 when something is not ready. ``decrypt`` prints a policy's
retained rows with their encrypted fields (``retain.encrypt``) in plain text, one JSON object a line, for whoever
holds the key connection ``retention_encryption_key`` (read as Airflow does) and can read the cache.
``store-setup`` is the admin's step, run with the store owner's credential (``--store-url``, else
``RETENTION_STORE_URL``): the store DDL and the roles' grants (see retention.store_setup); ``--print`` prints the
SQL instead, for Heroku Postgres, where the roles are credentials made first with ``heroku pg:credentials:create``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path


def store_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("RETENTION_STORE_URL"):
        return os.environ["RETENTION_STORE_URL"]
    raw = os.environ.get("AIRFLOW_CONN_RETENTION_STORE")
    if raw:
        if raw.lstrip().startswith("{"):
            c = json.loads(raw)
            auth = c.get("login") or ""
            if c.get("password"):
                auth += f":{c['password']}"
            return f"postgresql://{auth}{'@' if auth else ''}{c.get('host')}:{c.get('port') or 5432}/{c.get('schema')}"
        return raw.replace("postgres://", "postgresql://", 1)
    raise SystemExit("no store: pass --store-url, or set RETENTION_STORE_URL or AIRFLOW_CONN_RETENTION_STORE")


def connect_register(conn_id: str) -> int:
    """POST /auth/<app> on Connect's discovery service with the connection's token; then show what it finds."""
    from retention.hooks.heroku_connect import HerokuConnectError, HerokuConnectHook

    hook = HerokuConnectHook(conn_id)
    try:
        answer = hook.register()
        found = hook.discover()
    except HerokuConnectError as err:
        print(err, file=sys.stderr)
        return 1
    who = (answer.get("user") or {}).get("email") or "the token's user"
    where = ", ".join(f"{c.get('resource_name')} ({c.get('region_url')})" for c in found) or "none"
    print(f"{who} is on the access list of the Heroku Connect add-on of {hook.app_name}; connections: {where}")
    return 0


def preflight(args) -> int:
    from retention import preflight as checks
    from retention.policy import load_policies

    policies, errors = load_policies(args.policies)
    report = checks.run(policies, salesforce_conn_id=args.salesforce_conn_id, store_conn_id=args.store_conn_id,
                        heroku_connect_conn_id=args.connect_conn_id, check_pool=not args.no_pool)
    for path, error in errors.items():
        for line in error.lines():
            report.add("policy", path.name, checks.FAIL, line)
    print(report.table())
    return 0 if report.ready else 1


def decrypt(args) -> int:
    """Read back a policy's encrypted retained fields; exits 1 on a value that does not decrypt (named on stderr)."""
    import psycopg
    from airflow.sdk import BaseHook

    from retention.encryption import EncryptionError, Keyring, read_back
    from retention.policy import load_policies
    from retention.steps.load import needs_encryption_key

    policies, _ = load_policies(args.policies)
    policy = next((p for p in policies if p.id == args.policy), None)
    if policy is None:
        print(f"no policy {args.policy!r} loads from the policies folder (ids: {', '.join(p.id for p in policies)})",
              file=sys.stderr)
        return 2
    if not needs_encryption_key(policy):
        print(f"policy {policy.id} encrypts no retained field (retain.encrypt)", file=sys.stderr)
        return 2
    try:
        key = BaseHook.get_connection(args.key_conn_id)
        keyring = Keyring.from_connection(key.password, key.extra_dejson, conn_id=args.key_conn_id)
    except EncryptionError as err:
        print(err, file=sys.stderr)
        return 2
    except Exception as err:  # AirflowNotFoundException, or a secrets backend's own error
        print(f"cannot read the key connection '{args.key_conn_id}': {err}", file=sys.stderr)
        return 2
    with psycopg.connect(store_url(args.store_url)) as conn:
        try:
            for row in read_back(conn, policy, keyring, args.sfid):
                print(json.dumps(row, default=str, ensure_ascii=False))
        except EncryptionError as err:
            print(err, file=sys.stderr)
            return 1
    return 0


def store_setup(args) -> int:
    """Apply the DDL and the grants as the store's owner, or print them (``--print``)."""
    from retention import store_setup as setup

    try:
        roles = setup.Roles(pipeline=args.pipeline_role, analyst=args.analyst_role, external=args.external_role,
                            mirror=args.mirror_schema)
    except ValueError as err:  # a name that would have to be quoted in the GRANTs
        print(f"store-setup: {err}", file=sys.stderr)
        return 2
    if args.print:
        print(setup.script(roles), end="")
        return 0
    import psycopg

    try:
        with psycopg.connect(store_url(args.store_url)) as conn:
            done = setup.apply(conn, roles)
    except (setup.SetupError, psycopg.Error) as err:
        print(f"store-setup failed: {err}".strip(), file=sys.stderr)
        return 1
    print("\n".join(done))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retention",
        description="Retention evidence for auditors; Heroku Connect access; preflight; encrypted fields read "
                    "back; the store's setup.")
    parser.add_argument("--store-url", help="Postgres URL of the retention store")
    sub = parser.add_subparsers(dest="command", required=True)
    evidence = sub.add_parser("evidence", help="verify or export the run ledger")
    actions = evidence.add_subparsers(dest="action", required=True)
    ver = actions.add_parser("verify", help="check the ledger's hash chain; names the first broken row")
    ver.add_argument("--head", help="a head hash noted from an earlier verify; it must still be in the ledger")
    exp = actions.add_parser("export", help="write a JSON and a CSV report of a policy's runs")
    exp.add_argument("--policy", required=True)
    exp.add_argument("--since", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD")
    exp.add_argument("--out", type=Path, default=Path("."))
    reg = sub.add_parser("connect-register", help="add the Heroku Connect token's user to the add-on's access list "
                                                  "(once per user)")
    reg.add_argument("--conn-id", default="heroku_connect_default", help="the Airflow connection of Heroku Connect")
    pre = sub.add_parser("preflight", help="check the org, store, Heroku Connect and Airflow before a first run")
    pre.add_argument("--policies", type=Path, help="policies folder (default: Airflow's [retention] "
                                                   "policies_dir, else include/policies beside Airflow's dags folder)")
    pre.add_argument("--salesforce-conn-id", default="salesforce_default")
    pre.add_argument("--store-conn-id", default="retention_store")
    pre.add_argument("--connect-conn-id", default="heroku_connect_default")
    pre.add_argument("--no-pool", action="store_true", help="skip the Airflow pool check (no metadata database)")
    dec = sub.add_parser("decrypt", help="print a policy's retained rows with encrypted fields in plain text "
                                         "(needs the key connection)")
    dec.add_argument("--policy", required=True)
    dec.add_argument("--sfid", action="append", help="only this record (repeat for more)")
    dec.add_argument("--policies", type=Path, help="policies folder (default as for preflight)")
    dec.add_argument("--key-conn-id", default="retention_encryption_key")
    setup = sub.add_parser(
        "store-setup", help="the admin's step: apply the store DDL and grant the pipeline and analyst roles their "
        "least privilege (run once with the store owner's credential, and again after an upgrade)",
        description="Run with the store owner's credential (--store-url or RETENTION_STORE_URL; on Heroku Postgres "
        "the default credential). Roles missing are created where the owner may create roles; on Heroku Postgres "
        "make them first as credentials: `heroku pg:credentials:create --name retention_pipeline` (and "
        "retention_analyst, retention_external), then run this, or `--print` the SQL for `heroku pg:psql`.")
    setup.add_argument("--print", action="store_true", help="print the SQL (DDL and grants) instead of running it")
    setup.add_argument("--pipeline-role", default="retention_pipeline", help="the role the tasks connect as")
    setup.add_argument("--analyst-role", default="retention_analyst", help="the analysts' read-only role")
    setup.add_argument("--external-role", default="retention_external",
                       help="the role that reads the External Object views only")
    setup.add_argument("--mirror-schema", default="salesforce", help="Heroku Connect's schema (read-only to us)")
    args = parser.parse_args(argv)
    if args.command == "store-setup":
        return store_setup(args)
    if args.command == "connect-register":
        return connect_register(args.conn_id)
    if args.command == "preflight":
        return preflight(args)
    if args.command == "decrypt":
        return decrypt(args)

    import psycopg

    from retention import evidence

    with psycopg.connect(store_url(args.store_url)) as conn:
        if args.action == "verify":
            result = evidence.verify(conn, head=args.head)
            print(result.describe())
            return 0 if result.ok else 1
        json_path, csv_path = evidence.export(conn, args.policy, args.since, args.out)
        print(f"wrote {json_path} and {csv_path}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
