"""Alerts: a forced validation failure delivers an e-mail to a real local SMTP server (aiosmtpd) and a post
to a local Slack-style webhook receiver, each naming the policy, the counts that disagreed and the run."""

from __future__ import annotations

import datetime as dt
import json
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from retention import alerts
from tests.conftest import REPO, free_port
from tests.policy_support import lose_staged_rows, policy_world

LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) + dt.timedelta(days=1500)


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, received
    controller.stop()


@pytest.fixture
def webhook():
    posts: list = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/retention", posts
    server.shutdown()


def test_message_names_policy_run_task_counts_and_link():
    subject, body = alerts.message("inactive_contacts", "retention__inactive_contacts", "manual__2026-01-01",
                                   "validate_row_counts", "eligible 5, staged 3 (expected 5)",
                                   {"counts": ["staged 3 != eligible 5", "retained 3 != eligible 5"],
                                    "data_docs": "/docs/index.html"})
    assert subject == "[retention] inactive_contacts: validation failed (run manual__2026-01-01)"
    assert "staged 3 (expected 5)" in body and "Task: validate_row_counts" in body
    assert "Counts that disagreed: staged 3 != eligible 5; retained 3 != eligible 5" in body.splitlines()
    assert "Validation report (Data Docs): /docs/index.html" in body.splitlines()
    assert "/dags/retention__inactive_contacts/runs/manual__2026-01-01" in body
    subject, _ = alerts.message("p", "retention__p", "r", "delete_or_mask", "boom")
    assert subject == "[retention] p: task delete_or_mask failed (run r)"


@pytest.fixture
def world(sandbox, airflow_db):
    with policy_world(sandbox, contacts=100, seed=31):
        yield sandbox


def test_a_validation_failure_is_mailed_and_posted(world, smtp_server, webhook, monkeypatch):
    from retention.factory import build_dag
    from retention.policy import Alerts, load_policy

    smtp_port, mails = smtp_server
    webhook_url, posts = webhook
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "Privacy Bot <privacy-bot@example.com>"}}))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook", "password": webhook_url}))
    sandbox = world
    policy = load_policy(REPO / "include" / "policies" / "inactive_contacts.yaml").model_copy(update={
        "alerts": Alerts(email=["privacy-team@example.com"], smtp_conn_id="smtp_alerts",
                         slack_webhook_conn_id="slack_alerts")})
    dag = build_dag(policy)

    lose_staged_rows(monkeypatch)
    try:
        run = dag.test(logical_date=LOGICAL_DATE, run_conf={"dry_run": False, "cutoff": None})
    finally:  # the failed run's working tables stay for inspection in production; tests clean up
        with sandbox.store_conn() as conn:
            for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' "
                                         "AND tablename LIKE %s", (f"inactive_contacts__{LOGICAL_DATE:%Y%m%d}%",)):
                conn.execute(f'DROP TABLE retention_staging."{table}"')
            conn.execute("DELETE FROM cache.contact WHERE _retention_run LIKE %s",
                         (f"inactive_contacts__{LOGICAL_DATE:%Y%m%d}%",))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["validate_row_counts"] == "failed", states

    (recipients, mail), = mails
    assert recipients == ["privacy-team@example.com"]
    assert mail["From"] == "Privacy Bot <privacy-bot@example.com>"  # the SMTP connection's own sender
    assert mail["Subject"].startswith("[retention] inactive_contacts: validation failed (run ")
    text = mail.get_payload()[0].get_payload(decode=True).decode()
    assert "Task: validate_row_counts" in text and "(expected " in text and "staged " in text
    assert "Counts that disagreed: staged " in text and "retained " in text
    assert "Validation report (Data Docs): " in text and "index.html" in text
    assert f"/dags/retention__inactive_contacts/runs/{run.run_id.replace(':', '%3A').replace('+', '%2B')}" in text

    (post,) = posts
    assert "inactive_contacts: validation failed" in post["text"] and "(expected " in post["text"]
    assert "Counts that disagreed: staged " in post["text"]
    header, facts, happened, docs, actions = post["blocks"]
    assert header["text"]["text"] == "inactive_contacts: validation failed"
    fields = [f["text"] for f in facts["fields"]]
    assert "*Policy*\ninactive_contacts" in fields and f"*Run*\n{run.run_id}" in fields
    assert any(f.startswith("*Counts that disagreed*\nstaged ") for f in fields)
    assert "(expected " in happened["text"]["text"] and "index.html" in docs["elements"][0]["text"]
    (button,) = actions["elements"]
    assert button["url"].endswith(f"/dags/retention__inactive_contacts/runs/{quote(run.run_id, safe='')}")


def test_the_sender_is_the_smtp_connections_own_else_airflows(monkeypatch):
    """Mail leaves from the address the mail server accepts: the connection's from_email, else Airflow's
    [email] from_email; never one the product invents."""
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_OWN", json.dumps({"conn_type": "smtp", "host": "mail.example.com",
                                                           "extra": {"from_email": "dpo@example.com"}}))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_PLAIN", json.dumps({"conn_type": "smtp", "host": "mail.example.com"}))
    monkeypatch.setenv("AIRFLOW__EMAIL__FROM_EMAIL", "Airflow <airflow@example.com>")
    assert alerts.sender("smtp_own") == "dpo@example.com"
    assert alerts.sender("smtp_plain") == "Airflow <airflow@example.com>"
    monkeypatch.delenv("AIRFLOW__EMAIL__FROM_EMAIL")
    assert alerts.sender("smtp_plain") is None  # the smtp provider then refuses to send, naming from_email
