"""Sandbox throughput: seeding 1,000,000 contacts and reading all of them back through Bulk API 2.0,
and, side by side in the same run, REST query paging against a Bulk 2.0 query of the same records.

Run with ``make bench``; results are recorded in docs/benchmarks.md. These are benchmarks, not tests:
they measure, and assert only that every record came back.
"""

from __future__ import annotations

import os

import pytest

CONTACTS = int(os.environ.get("BENCH_CONTACTS", "1000000"))
SIDE_BY_SIDE = int(os.environ.get("BENCH_SIDE_BY_SIDE", "100000"))
# simple-salesforce sleeps ``wait`` seconds before its first job poll (5 by default); the product's own
# Bulk 2.0 hook polls every 0.5 s, so that is what is measured here.
BULK_WAIT = 0.5


@pytest.fixture(scope="module", autouse=True)
def connect_paused(sandbox):
    """Pause the Connect sync loop so that mirroring a million rows does not share the CPU with what is measured."""
    import requests

    env = sandbox.env
    base = f"{env['HEROKU_CONNECT_API_URL']}/connections/{env['HEROKU_CONNECT_CONNECTION_ID']}/actions"
    headers = {"Authorization": f"Bearer {env['HEROKU_CONNECT_TOKEN']}"}
    requests.post(f"{base}/pause", headers=headers, verify=sandbox.ca, timeout=30).raise_for_status()
    yield
    requests.post(f"{base}/resume", headers=headers, verify=sandbox.ca, timeout=30).raise_for_status()


@pytest.fixture(scope="module")
def sf(sandbox):
    from simple_salesforce import Salesforce

    env = sandbox.env
    return Salesforce(username=env["SALESFORCE_USERNAME"], consumer_key=env["SALESFORCE_CONSUMER_KEY"],
                      privatekey_file=env["SALESFORCE_PRIVATE_KEY_FILE"],
                      domain=f"localhost:{env['SANDBOX_SF_PORT']}/services/oauth2/token#",
                      version=env["SALESFORCE_API_VERSION"])


def _rows(pages) -> int:
    return sum(page.count("\n") - 1 for page in pages)


def test_seed_one_million_contacts(benchmark, sandbox):
    from sandbox import seed

    def run():
        with sandbox.org_conn() as conn:
            seed.clear(conn)
            return seed.seed(conn, contacts=CONTACTS)

    counts = benchmark.pedantic(run, rounds=1, iterations=1)
    assert counts["Contact"] == CONTACTS
    benchmark.extra_info.update(counts)


def test_bulk2_query_all_contacts(benchmark, sandbox, sf):
    def run():
        return _rows(sf.bulk2.Contact.query("SELECT Id, FirstName, LastName, Email, Birthdate, LastModifiedDate "
                                            "FROM Contact", wait=BULK_WAIT))

    assert benchmark.pedantic(run, rounds=1, iterations=1) == CONTACTS
    benchmark.extra_info["records"] = CONTACTS


SOQL = "SELECT Id, FirstName, LastName, Email, Birthdate, LastModifiedDate FROM Contact ORDER BY Id LIMIT {n}"


@pytest.mark.benchmark(group="rest-vs-bulk2")
def test_rest_query_paging(benchmark, sandbox, sf):
    got = benchmark.pedantic(lambda: len(sf.query_all(SOQL.format(n=SIDE_BY_SIDE))["records"]), rounds=3)
    assert got == SIDE_BY_SIDE


@pytest.mark.benchmark(group="rest-vs-bulk2")
def test_bulk2_query(benchmark, sandbox, sf):
    got = benchmark.pedantic(lambda: _rows(sf.bulk2.Contact.query(SOQL.format(n=SIDE_BY_SIDE), wait=BULK_WAIT)),
                             rounds=3)
    assert got == SIDE_BY_SIDE
