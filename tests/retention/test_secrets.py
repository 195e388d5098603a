"""Invariant 5, scanned everywhere a run writes: with a store password, a Salesforce password and security token,
an OAuth consumer secret, the Heroku Connect token, a Slack webhook and a hash key all set, a successful mask run
and a run that fails validation (alerted by mail and Slack) leave none of them, nor their URL-quoted or base64
forms, in the captured output and traceback (the task logs dag.test() prints), XCom and the rest of Airflow's record
of the runs, the ledger, the cache, the Data Docs or the alert bodies. dag.test() writes no task log files: those
that a scheduler's task processes write under AIRFLOW_HOME/logs are scanned in tests/test_airflow_standalone.py.

The Salesforce connection here logs in with OAuth's username-password flow (password + security token, consumer key
+ secret) instead of the sandbox's JWT, so the password, the token and the secret are each really sent."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
from urllib.parse import quote, quote_plus

import pytest

from tests.dags.secrets_dags import COMPANIES
from tests.policy_support import lose_staged_rows, org_rows, policy_world, store_rows
from tests.retention.test_alerts import smtp_server, webhook  # noqa: F401 (fixtures)

# Leads made for this module are created now: a logical date 400 days ahead puts them past the 365-day cutoff.
LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) + dt.timedelta(days=400)
FAILING_DATE = LOGICAL_DATE + dt.timedelta(days=1)


def encodings(secret: str) -> set[str]:
    """The secret and the forms it would take on its way out: URL-quoted (path and form style) and base64, at each
    of the three alignments it can have inside a longer base64 text (e.g. ``key:secret`` in Basic auth)."""
    raw = secret.encode()
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw).decode().rstrip("=")
            # Skip the characters that mix in the padding before, and the last one that mixes in what follows.
            forms.add(text[(offset * 4 + 2) // 3 + (1 if offset else 0):-1])
    return {f for f in forms if len(f) >= 8}


def test_encodings_find_a_secret_inside_longer_base64_and_urls():
    secret = "s3cr/et+key=&1"
    for text in (base64.b64encode(f"client:{secret}".encode()).decode(),
                 base64.b64encode(f"ab:{secret}:z".encode()).decode(),
                 base64.urlsafe_b64encode(f"{secret}".encode()).decode(),
                 f"https://x/?p={quote_plus(secret)}&q=1", f"postgresql://u:{quote(secret, safe='')}@h/db"):
        assert any(form in text for form in encodings(secret)), text
    assert not any(form in base64.b64encode(b"client:s3cr/et+kez=&1").decode() for form in encodings(secret))


@pytest.fixture
def secret_world(sandbox, airflow_db, monkeypatch, smtp_server, webhook):  # noqa: F811 (fixtures)
    """Connections with distinctive secrets (read back from the connections, not assumed), alert receivers, and a
    few leads of two companies of this module's own."""
    env = sandbox.env
    smtp_port, mails = smtp_server
    webhook_url, posts = webhook
    webhook_url = webhook_url.replace("/B000/", f"/B{secrets.token_hex(6)}/")
    hash_key = f"hk/{secrets.token_urlsafe(12)}+="
    with policy_world(sandbox):
        store = json.loads(env["AIRFLOW_CONN_RETENTION_STORE"])  # as the sandbox (or a pipeline role) exports it
        store["password"] = f"St0re pw/{secrets.token_urlsafe(9)}+&@"
        exported_sf = json.loads(env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
        connections = {
            "retention_store": store,
            "salesforce_default": {
                "conn_type": "salesforce", "login": env["SALESFORCE_USERNAME"],
                "password": env["SALESFORCE_PASSWORD"] + env["SALESFORCE_SECURITY_TOKEN"],
                "extra": {"consumer_key": env["SALESFORCE_CONSUMER_KEY"],
                          "consumer_secret": env["SALESFORCE_CONSUMER_SECRET"],
                          "domain": exported_sf["extra"]["domain"], "version": exported_sf["extra"]["version"]}},
            "retention_hash_key": {"conn_type": "generic", "password": hash_key},
            "smtp_alerts": {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
                            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "bot@example.com"}},
            "slack_alerts": {"conn_type": "slackwebhook", "password": webhook_url},
        }
        for conn_id, conn in connections.items():
            if conn_id == "retention_hash_key":  # policy_world restores the exported one afterwards
                os.environ["AIRFLOW_CONN_RETENTION_HASH_KEY"] = json.dumps(conn)
            else:
                monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

        from airflow.sdk import BaseHook

        def password(conn_id: str) -> str:
            return BaseHook.get_connection(conn_id).password

        sf_conn = BaseHook.get_connection("salesforce_default")
        secret_values = {
            "store password": password("retention_store"),
            "Salesforce password": env["SALESFORCE_PASSWORD"],
            "security token": env["SALESFORCE_SECURITY_TOKEN"],
            "OAuth consumer secret": sf_conn.extra_dejson["consumer_secret"],
            "hash key": password("retention_hash_key"),
            "Heroku Connect token": password("heroku_connect_default"),
            "Slack webhook": webhook_url.rsplit("/services/", 1)[1],
        }
        assert password("retention_store") == store["password"] and sf_conn.password.endswith(
            env["SALESFORCE_SECURITY_TOKEN"])

        from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

        sf = SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
        assert sf.auth_type == "password"  # OAuth username-password: the secret and the token were sent
        for n in range(6):
            for company in COMPANIES.values():
                sf.Lead.create({"FirstName": f"Ada{n}", "LastName": f"Lovelace{n}", "Company": company,
                                "Email": f"ada{n}@example.org", "Phone": f"+44 20 7946 {n:04d}",
                                "Country": "UK"})
        yield sandbox, secret_values, mails, posts


def test_no_secret_is_written_by_a_successful_or_a_failing_run(secret_world, monkeypatch, capfd):
    from retention import transforms
    from retention.operators.validate_row_counts import data_docs_dir
    from tests.dags import secrets_dags

    sandbox, secret_values, mails, posts = secret_world
    ok_id, failing_id = COMPANIES
    capfd.readouterr()
    try:
        ok, ok_states = run(secrets_dags.retention__secret_leads_ok, LOGICAL_DATE)
        lose_staged_rows(monkeypatch, count=1)
        failing, failing_states = run(secrets_dags.retention__secret_leads_failing, FAILING_DATE)
        out = "".join(capfd.readouterr())

        # The runs did what they should, with the secrets in use: the hash key made the retained Email.
        assert ok.state == "success", ok_states
        assert failing.state == "failed" and failing_states["validate_row_counts"] == "failed", failing_states
        retained = store_rows(sandbox, f"SELECT * FROM cache.{ok_id}")
        leads = org_rows(sandbox, "SELECT * FROM org.lead WHERE company = %s", (COMPANIES[ok_id],))
        assert len(retained) == len(leads) == 6
        key = secret_values["hash key"].encode()
        # Masked in the org (Email now a keyed hash); the retained copy holds the hash of the original Email.
        assert {r["email"] for r in retained} == {transforms.apply("hash", None, f"ada{n}@example.org", key=key)
                                                 for n in range(6)}
        assert all(lead["phone"] is None and not lead["lastname"].startswith("Lovelace") for lead in leads)
        assert "Traceback" in out and "validation failed" in out  # the failure's output was captured

        # Everything the runs wrote.
        written: dict[str, str] = {"captured output and tracebacks": out}
        written |= airflow_rows(sandbox, [dag.dag_id for dag in (ok, failing)])
        written["ledger"] = repr(store_rows(sandbox, "SELECT * FROM retention.runs WHERE policy_id = ANY(%s)",
                                            ([ok_id, failing_id],)))
        written["cache"] = repr(retained) + repr(store_rows(sandbox, f"SELECT * FROM cache.{failing_id}"))
        docs = [p for policy_id in (ok_id, failing_id) for p in data_docs_dir(policy_id).rglob("*") if p.is_file()]
        written |= {f"Data Docs {p}": p.read_text(errors="replace") for p in docs}
        (recipients, mail), = mails
        written["alert e-mail"] = mail.as_string() + "".join(
            part.get_payload(decode=True).decode(errors="replace") for part in mail.walk() if not part.is_multipart())
        written["Slack alert"] = json.dumps(posts)

        assert ok_id in written["ledger"]
        assert any(name.startswith("Data Docs") and name.endswith("index.html") for name in written)
        assert written["xcom"] and posts and "validation failed" in written["Slack alert"]
        for name, secret in secret_values.items():
            for form in encodings(secret):
                leaked = [where for where, text in written.items() if form in text]
                assert not leaked, f"the {name} ({form!r}) was written to: {', '.join(leaked)}"
    finally:
        with sandbox.store_conn() as conn:
            for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' "
                                         "AND tablename LIKE %s", ("secret_leads_%",)).fetchall():
                conn.execute(f'DROP TABLE retention_staging."{table}"')
            for policy_id in (ok_id, failing_id):
                conn.execute(f"DROP TABLE IF EXISTS cache.{policy_id} CASCADE")  # and its External Object view


def run(dag, logical_date):
    run = dag.test(logical_date=logical_date, run_conf={"dry_run": False, "cutoff": None})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def airflow_rows(sandbox, dag_ids: list[str]) -> dict[str, str]:
    """What Airflow's metadata database keeps of the runs: XCom, rendered fields, the runs' conf, the audit log."""
    import psycopg

    url = sandbox.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")
    queries = {"xcom": "SELECT value FROM xcom WHERE dag_id = ANY(%s)",
               "rendered task fields":
                   "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = ANY(%s)",
               "DAG run conf": "SELECT conf FROM dag_run WHERE dag_id = ANY(%s)",
               "Airflow's audit log": "SELECT extra FROM log WHERE dag_id = ANY(%s)"}
    with psycopg.connect(url) as conn:
        return {name: " ".join(str(row[0]) for row in conn.execute(query, (dag_ids,)))
                for name, query in queries.items()}
