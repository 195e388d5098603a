"""``make demo``: bring the sandbox up, seed the org, let Heroku Connect mirror it, print what each side
holds, and stop everything that was started.

Counts come through the same paths the product uses: the org through simple-salesforce over HTTPS,
the mirror through SQL on the store's ``salesforce`` schema, sync state from the Connect API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

import requests

from sandbox import __main__ as cli
from sandbox.config import Settings
from sandbox.objects import OBJECTS


def _wait_synced(env: dict[str, str], timeout: float) -> dict[str, dict]:
    """Poll the Connect API until every mapping is DATA_SYNCED; returns the mappings."""
    url = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}"
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(url, params={"deep": "true"}, headers=headers, verify=env["REQUESTS_CA_BUNDLE"],
                            timeout=30).json()
        mappings = {m["object_name"]: m for m in body["mappings"]}
        if all(m["state"] == "DATA_SYNCED" for m in mappings.values()):
            return mappings
        if time.monotonic() > deadline:
            raise SystemExit(f"Connect mirror not synced after {timeout:.0f}s: "
                             + ", ".join(f"{k}={m['state']}" for k, m in mappings.items()))
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    state = cli.read_state(settings)
    already_running = bool(state and cli._pid_alive(state["pid"]))
    started = time.monotonic()
    if not already_running and cli.cmd_up(settings, None) != 0:
        return 1
    try:
        state = cli.read_state(settings)
        env = cli.env_vars(settings, state["base_url"])
        os.environ.update(env)
        print(f"\nSeeding the org ({args.contacts} contacts and related records)...")
        cli.cmd_seed(settings, SimpleNamespace(reset=True, contacts=args.contacts, seed=42))
        print("Waiting for Heroku Connect to mirror the org...")
        mappings = _wait_synced(env, timeout=300)

        from simple_salesforce import Salesforce

        from sandbox.postgres import Postgres

        sf = Salesforce(username=settings.username, password=settings.password,
                        security_token=settings.security_token,
                        domain=f"localhost:{settings.sf_port}/services/Soap/u/59.0#")
        mirror = cli._counts(Postgres(state["base_url"], embedded=True).url("retention_store"), "salesforce")
        print(f"\n{'object':<20}{'org (SOQL)':>12}{'mirror (SQL)':>14}  Connect mapping state")
        for obj in OBJECTS.values():
            in_org = sf.query(f"SELECT COUNT() FROM {obj.name}")["totalSize"]
            print(f"{obj.name:<20}{in_org:>12}{mirror.get(obj.name, 0):>14}  {mappings[obj.name]['state']}")
        bulk = sf.bulk2.Contact.query("SELECT Id FROM Contact")
        fetched = sum(max(page.count("\n") - 1, 0) for page in bulk)
        print(f"\nBulk API 2.0 query of all contacts returned {fetched} rows.")
    finally:
        if not already_running and not args.keep:
            print()
            cli.cmd_down(settings, None)
    print(f"Demo finished in {time.monotonic() - started:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
