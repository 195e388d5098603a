"""airflow_settings.yaml and its loader, against a real Airflow metadata DB in the sandbox's Postgres; and
the provider entry point that registers the heroku_connect connection type."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from retention.settings_loader import SettingsError, VariableSpec, apply_settings, expand_env, load_settings

REPO = Path(__file__).resolve().parent.parent
SETTINGS_FILE = REPO / "airflow_settings.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text)
    return path


def db_connection(conn_id: str):
    from airflow.models import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Connection).where(Connection.conn_id == conn_id)).all()
        assert len(rows) == 1, f"{len(rows)} rows for connection {conn_id}"
        conn = rows[0]
        values = {"conn_type": conn.conn_type, "host": conn.host, "schema": conn.schema, "login": conn.login,
                  "password": conn.password, "port": conn.port, "extra": conn.extra_dejson}
        session.expunge_all()
        return values


def db_pool(name: str):
    from airflow.models import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Pool).where(Pool.pool == name)).all()
        assert len(rows) == 1, f"{len(rows)} rows for pool {name}"
        return rows[0].slots, rows[0].description


def db_variable(key: str) -> str:
    from airflow.models import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key == key)).all()
        assert len(rows) == 1, f"{len(rows)} rows for variable {key}"
        return rows[0].val


def actions(changes) -> dict[str, str]:
    return {f"{c.kind}:{c.name}": c.action for c in changes}


@pytest.fixture
def clean_test_entries(airflow_db):
    """Remove this module's test_loader_* entries, so a re-run against a kept database starts clean."""
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    def clean():
        with create_session() as session:
            session.execute(delete(Pool).where(Pool.pool.like("test_loader_%")))
            session.execute(delete(Connection).where(Connection.conn_id.like("test_loader_%")))
            session.execute(delete(Variable).where(Variable.key.like("test_loader_%")))

    clean()
    yield
    clean()


# --- the project's own file, against the sandbox ----------------------------------------------------------


@pytest.fixture
def sandbox_env(sandbox) -> dict[str, str]:
    return {**sandbox.env, "RETENTION_HASH_KEY": secrets.token_hex(32)}


def test_repo_settings_apply_to_airflow_db(airflow_db, sandbox, sandbox_env):
    settings = load_settings(SETTINGS_FILE, env=sandbox_env)
    changes = actions(apply_settings(settings))
    assert {k: v for k, v in changes.items() if v == "created" or v == "updated"}.keys() >= {
        "pool:salesforce_api", "connection:salesforce_default", "connection:retention_store",
        "connection:heroku_connect_default", "connection:retention_hash_key"}

    slots, description = db_pool("salesforce_api")
    assert slots == 4
    assert "shared by all retention policies" in description

    sf = db_connection("salesforce_default")
    assert sf["conn_type"] == "salesforce"
    # OAuth 2.0 JWT bearer: a username, no password and no security token (SOAP login() is gone from API 65.0).
    assert (sf["login"], sf["password"]) == (sandbox.env["SALESFORCE_USERNAME"], None)
    assert sf["extra"] == {
        "consumer_key": sandbox.env["SALESFORCE_CONSUMER_KEY"],
        "private_key_file_path": sandbox.env["SALESFORCE_PRIVATE_KEY_FILE"],
        "domain": f"localhost:{sandbox.env['SANDBOX_SF_PORT']}/services/oauth2/token#",
        "version": "66.0",
    }

    store = db_connection("retention_store")
    assert (store["conn_type"], store["host"], store["port"], store["schema"]) == (
        "postgres", "127.0.0.1", int(sandbox.env["SANDBOX_PG_PORT"]), "retention_store")

    connect = db_connection("heroku_connect_default")
    assert connect["conn_type"] == "heroku_connect"
    # The discovery form: the hook finds the connection and its API root from the app.
    assert (connect["host"], connect["password"]) == (None, sandbox.env["HEROKU_CONNECT_TOKEN"])
    assert connect["extra"] == {"app_name": sandbox.env["HEROKU_CONNECT_APP_NAME"], "resource_name": "",
                                "discovery_url": sandbox.env["HEROKU_CONNECT_DISCOVERY_URL"]}

    hash_key = db_connection("retention_hash_key")
    assert (hash_key["conn_type"], hash_key["password"]) == ("generic", sandbox_env["RETENTION_HASH_KEY"])

    # No secret is committed: the file holds placeholders only.
    text = SETTINGS_FILE.read_text()
    for name in ("SALESFORCE_PRIVATE_KEY_FILE", "HEROKU_CONNECT_TOKEN", "RETENTION_STORE_URL"):
        assert sandbox.env[name] not in text
        assert f"${{{name}}}" in text
    assert sandbox_env["RETENTION_HASH_KEY"] not in text
    assert sandbox.env["SALESFORCE_PASSWORD"] not in text and "SALESFORCE_SECURITY_TOKEN" not in text

    # Applying the same file again changes nothing.
    again = actions(apply_settings(load_settings(SETTINGS_FILE, env=sandbox_env)))
    assert set(again.values()) == {"unchanged"}


def test_hook_uses_the_applied_connection(airflow_db, sandbox, sandbox_env, monkeypatch):
    """With the env-var connection gone, the hook reads the DB entry the loader wrote and reaches Connect,
    as the UI's "Test" button does (the API server reads connections from the metadata DB)."""
    from retention.hooks.heroku_connect import HerokuConnectHook

    apply_settings(load_settings(SETTINGS_FILE, env=sandbox_env))
    monkeypatch.delenv("AIRFLOW_CONN_HEROKU_CONNECT_DEFAULT", raising=False)
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")  # the API server's secrets search path
    ok, message = HerokuConnectHook().test_connection()
    assert ok, message


def test_env_var_connection_precedence_is_reported(airflow_db, sandbox_env, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HEROKU_CONNECT_DEFAULT", "heroku-connect://x")
    changes = {c.name: c for c in apply_settings(load_settings(SETTINGS_FILE, env=sandbox_env))}
    assert "takes precedence" in changes["heroku_connect_default"].note
    assert changes["retention_hash_key"].note is None


# --- idempotence and updates ------------------------------------------------------------------------------

SETTINGS = """
airflow:
  pools:
    - pool_name: test_loader_pool
      pool_slot: ${TEST_LOADER_SLOTS:-3}
      pool_description: a test pool
  connections:
    - conn_id: test_loader_db
      conn_type: postgres
      conn_host: db.example.com
      conn_port: 5433
      conn_schema: ${TEST_LOADER_SCHEMA:-}
      conn_login: app
      conn_password: ${TEST_LOADER_PASSWORD}
      conn_extra:
        sslmode: require
        options: ${TEST_LOADER_OPTIONS:--c statement_timeout=5000}
    - conn_id: test_loader_json_extra
      conn_type: generic
      conn_extra: '{"token": "${TEST_LOADER_PASSWORD}"}'
  variables:
    - variable_name: test_loader_channel
      variable_value: "#data-retention"
    - variable_name: test_loader_limits
      variable_value: {max_records: 50000, objects: [Contact, Lead]}
    - variable_name: test_loader_secret
      variable_value: ${TEST_LOADER_PASSWORD}
"""


def test_apply_twice_is_idempotent_and_updates_in_place(clean_test_entries, tmp_path):
    path = write(tmp_path, SETTINGS)
    env = {"TEST_LOADER_PASSWORD": "s3cr3t-$value"}

    first = actions(apply_settings(load_settings(path, env=env)))
    assert first == {
        "pool:test_loader_pool": "created", "connection:test_loader_db": "created",
        "connection:test_loader_json_extra": "created", "variable:test_loader_channel": "created",
        "variable:test_loader_limits": "created", "variable:test_loader_secret": "created",
    }
    assert db_pool("test_loader_pool") == (3, "a test pool")
    assert db_connection("test_loader_db") == {
        "conn_type": "postgres", "host": "db.example.com", "schema": None, "login": "app",
        "password": "s3cr3t-$value", "port": 5433,
        "extra": {"sslmode": "require", "options": "-c statement_timeout=5000"},
    }
    assert db_connection("test_loader_json_extra")["extra"] == {"token": "s3cr3t-$value"}
    assert db_variable("test_loader_channel") == "#data-retention"
    import json

    assert json.loads(db_variable("test_loader_limits")) == {"max_records": 50000, "objects": ["Contact", "Lead"]}
    assert db_variable("test_loader_secret") == "s3cr3t-$value"

    second = actions(apply_settings(load_settings(path, env=env)))
    assert set(second.values()) == {"unchanged"}

    # New values in the environment update the same rows (db_* helpers assert there is exactly one row).
    env = {"TEST_LOADER_PASSWORD": "rotated", "TEST_LOADER_SLOTS": "6", "TEST_LOADER_SCHEMA": "app"}
    third = actions(apply_settings(load_settings(path, env=env)))
    assert third["pool:test_loader_pool"] == "updated"
    assert third["connection:test_loader_db"] == "updated"
    assert third["variable:test_loader_secret"] == "updated"
    assert third["variable:test_loader_channel"] == "unchanged"
    assert db_pool("test_loader_pool") == (6, "a test pool")
    conn = db_connection("test_loader_db")
    assert (conn["password"], conn["schema"]) == ("rotated", "app")
    assert db_variable("test_loader_secret") == "rotated"


def test_a_failing_entry_rolls_back_the_whole_file(clean_test_entries, tmp_path):
    from airflow.models import Connection, Pool
    from airflow.utils.session import create_session
    from sqlalchemy import func, select
    from sqlalchemy.exc import DBAPIError

    path = write(tmp_path, """
airflow:
  pools: [{pool_name: test_loader_rollback, pool_slot: 2}]
  connections: [{conn_id: test_loader_rollback, conn_type: generic}]
""")
    settings = load_settings(path)
    # Bypasses the loader's validation: the database itself rejects the over-long key, after the pool and
    # the connection were written in the same transaction.
    broken = replace(settings, variables=(VariableSpec(key="x" * 300, value="v"),))
    with pytest.raises(DBAPIError):
        apply_settings(broken)
    with create_session() as session:
        connections = session.scalar(select(func.count()).select_from(Connection)
                                     .where(Connection.conn_id == "test_loader_rollback"))
        pools = session.scalar(select(func.count()).select_from(Pool).where(Pool.pool == "test_loader_rollback"))
    assert (connections, pools) == (0, 0)


def test_cli_applies_and_reports(clean_test_entries, tmp_path):
    path = write(tmp_path, """
airflow:
  pools:
    - pool_name: test_loader_cli
      pool_slot: 2
      pool_description: from the CLI
  connections:
    - conn_id: test_loader_cli
      conn_type: generic
      conn_password: ${TEST_LOADER_CLI_SECRET}
""")
    env = {**os.environ, "TEST_LOADER_CLI_SECRET": "cli-secret-value",
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "retention.settings_loader", str(path)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pool test_loader_cli: created" in out.stdout
    assert "connection test_loader_cli: created" in out.stdout
    assert "cli-secret-value" not in out.stdout + out.stderr
    assert db_pool("test_loader_cli") == (2, "from the CLI")

    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pool test_loader_cli: unchanged" in out.stdout

    del env["TEST_LOADER_CLI_SECRET"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "TEST_LOADER_CLI_SECRET is not set" in out.stderr
    assert "Traceback" not in out.stderr


# --- clear errors -----------------------------------------------------------------------------------------


def test_missing_env_var_names_variable_and_key(tmp_path):
    path = write(tmp_path, SETTINGS)
    with pytest.raises(SettingsError) as err:
        load_settings(path, env={})
    message = str(err.value)
    assert "TEST_LOADER_PASSWORD is not set" in message
    assert "airflow.connections[0] (test_loader_db).conn_password" in message
    assert str(path) in message


def test_repo_settings_need_the_hash_key(sandbox_env):
    env = dict(sandbox_env)
    del env["RETENTION_HASH_KEY"]
    with pytest.raises(SettingsError, match=r"retention_hash_key\)\.conn_password: environment variable "
                                            r"RETENTION_HASH_KEY is not set"):
        load_settings(SETTINGS_FILE, env=env)


@pytest.mark.parametrize(("text", "expected"), [
    ("airflow:\n  pools:\n    - pool_name: a\n     pool_slot: 1\n",
     r"(?s)not valid YAML: .*airflow_settings\.yaml\", line 4, column 6"),
    ("- just\n- a list\n", r"expected a mapping with the key 'airflow', got a list"),
    ("airflow:\n  conections: []\n", r"airflow: unknown key\(s\) 'conections'"),
    ("airflow:\n  pools: {pool_name: a}\n", r"airflow\.pools: expected a list, got a mapping"),
    ("airflow:\n  pools:\n    - pool_name: a\n      pool_slots: 4\n",
     r"airflow\.pools\[0\]: unknown key\(s\) 'pool_slots'; allowed: 'pool_description', 'pool_name', 'pool_slot'"),
    ("airflow:\n  pools:\n    - pool_name: a\n      pool_slot: four\n",
     r"airflow\.pools\[0\] \(a\)\.pool_slot: expected an integer, got 'four'"),
    ("airflow:\n  pools:\n    - pool_name: a\n", r"airflow\.pools\[0\] \(a\): pool_slot is required"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_host: h\n",
     r"airflow\.connections\[0\] \(x\): conn_type is required"),
    ("airflow:\n  connections:\n    - conn_id: bad id\n      conn_type: generic\n",
     r"airflow\.connections\[0\]\.conn_id: 'bad id' may only contain"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_port: ${P:-http}\n",
     r"\(x\)\.conn_port: expected an integer, got 'http'"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_extra: '{not json'\n",
     r"\(x\)\.conn_extra: expected a mapping or a JSON object"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: mysql\n      conn_uri: postgres://h/db\n",
     r"conn_type 'mysql' disagrees with the conn_uri scheme 'postgres'"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_uri: postgres://h/db\n      conn_login: u\n",
     r"conn_uri cannot be combined with conn_login"),
    ("airflow:\n  variables:\n    - variable_name: v\n      variable_value: 1\n    - variable_name: v\n"
     "      variable_value: 2\n", r"airflow\.variables: declared more than once: v"),
    ("airflow:\n  variables:\n    - variable_name: v\n      variable_value: ${BROKEN\n",
     r"\(v\)\.variable_value: unterminated placeholder|\(v\)\.variable_value: bad placeholder"),
])
def test_malformed_files_fail_naming_the_key(tmp_path, text, expected):
    with pytest.raises(SettingsError, match=expected):
        load_settings(write(tmp_path, text), env={})


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError, match=r"nope\.yaml: cannot read settings file"):
        load_settings(tmp_path / "nope.yaml")


def test_empty_file_is_empty_settings(tmp_path):
    settings = load_settings(write(tmp_path, "# nothing yet\n"))
    assert (settings.connections, settings.pools, settings.variables) == ((), (), ())


def test_secrets_stay_out_of_reprs(tmp_path):
    settings = load_settings(write(tmp_path, SETTINGS), env={"TEST_LOADER_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${A}", {"A": "1"}, "1"),
    ("x-${A}-y", {"A": "1"}, "x-1-y"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A-d}", {}, "d"),
    ("${A:-}", {}, ""),
    ("${A:-${B}:${C:-3}}", {"B": "b"}, "b:3"),
    ("${A:-${MISSING}}", {"A": "set"}, "set"),  # a default that is not used is not evaluated
    ("$$A $${A} $5", {"A": "1"}, "$A ${A} $5"),
    ("${A}", {"A": "${B}"}, "${B}"),  # values are not expanded again
])
def test_expand_env(text, env, expected):
    assert expand_env(text, env) == expected


@pytest.mark.parametrize("text", ["${}", "${1A}", "${A", "${A:-x", "${A?x}"])
def test_expand_env_rejects_bad_placeholders(text):
    with pytest.raises(SettingsError, match="placeholder"):
        expand_env(text, {"A": "1"})


# --- the provider entry point ------------------------------------------------------------------------------


def test_provider_info_has_the_shape_airflow_validates():
    from airflow.providers.salesforce.get_provider_info import get_provider_info as salesforce_info
    from airflow.providers_manager import _create_provider_info_schema_validator

    from retention.provider import get_provider_info

    info = get_provider_info()
    _create_provider_info_schema_validator().validate(info)
    reference = salesforce_info()["connection-types"][0]
    (ours,) = info["connection-types"]
    assert set(ours) == set(reference)
    assert set(ours["ui-field-behaviour"]) >= {"hidden-fields", "relabeling"}
    assert info["package-name"] == "salesforce-retention"


def test_provider_registers_heroku_connect_connection_type():
    registered = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("retention.")]
    assert registered, "the project is not installed: run `pip install --no-deps -e .` (make install does)"

    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers["salesforce-retention"].version == "0.1.0"
    ui = {m.connection_type: m for m in manager.iter_connection_type_hook_ui_metadata()}
    assert ui["heroku_connect"].hook_class_name == "retention.hooks.heroku_connect.HerokuConnectHook"
    assert ui["heroku_connect"].hook_name == "Heroku Connect"
    behaviour = manager.field_behaviours["heroku_connect"]
    assert behaviour["hidden_fields"] == ["schema", "port", "login"]
    assert behaviour["relabeling"] == {"host": "API URL", "password": "Heroku API token"}
    widget = manager.connection_form_widgets["extra__heroku_connect__connection_id"]
    assert widget.field["schema"]["title"] == "Connect connection ID"
