"""Command line: ``python -m retention evidence verify [--head HASH]`` and
``python -m retention evidence export --policy ID --since DATE [--out DIR]``.

The store is found from ``--store-url``, else ``RETENTION_STORE_URL``, else the Airflow connection
``retention_store`` given as ``AIRFLOW_CONN_RETENTION_STORE`` (what ``python -m sandbox env`` exports).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retention", description="Retention evidence for auditors.")
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
    args = parser.parse_args(argv)

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
