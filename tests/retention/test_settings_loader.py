"""airflow_settings.yaml and its loader: no secret and no placeholder in the file, its sections applied with
Airflow's own `airflow pools/variables/connections import` against a real metadata DB in the sandbox's Postgres,
the connections the DAGs use coming from AIRFLOW_CONN_* (what `python -m sandbox env` exports); and the provider
entry point that registers the heroku_connect connection type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from retention.settings_loader import SettingsError, apply_settings, import_files, load_settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS_FILE = REPO / "airflow_settings.yaml"
# The connections the policy DAGs use: secrets, so never in the file.
SECRET_CONNECTIONS = ("salesforce_default", "retention_store", "heroku_connect_default", "retention_hash_key",
                      "retention_encryption_key")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text)
    return path


def db_rows(model, column, name: str) -> list:
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(model).where(column == name)).all()
        session.expunge_all()
        return rows


def db_connection(conn_id: str) -> dict:
    from airflow.models import Connection

    rows = db_rows(Connection, Connection.conn_id, conn_id)
    assert len(rows) == 1, f"{len(rows)} rows for connection {conn_id}"
    conn = rows[0]
    return {"conn_type": conn.conn_type, "host": conn.host, "schema": conn.schema, "login": conn.login,
            "password": conn.password, "port": conn.port, "extra": conn.extra_dejson}


def db_pool(name: str) -> tuple[int, str]:
    from airflow.models import Pool

    rows = db_rows(Pool, Pool.pool, name)
    assert len(rows) == 1, f"{len(rows)} rows for pool {name}"
    return rows[0].slots, rows[0].description


def db_variable(key: str) -> str:
    from airflow.models import Variable

    rows = db_rows(Variable, Variable.key, key)
    assert len(rows) == 1, f"{len(rows)} rows for variable {key}"
    return rows[0].val


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


def test_repo_settings_hold_no_secret_and_no_placeholder(sandbox):
    text = SETTINGS_FILE.read_text()
    assert not [line for line in text.splitlines() if "${" in line and not line.lstrip().startswith("#")]
    for name in ("SALESFORCE_PRIVATE_KEY_FILE", "HEROKU_CONNECT_TOKEN", "RETENTION_STORE_URL", "SALESFORCE_PASSWORD",
                 "SALESFORCE_CONSUMER_KEY"):
        assert sandbox.env[name] not in text
    assert "sandbox-retention-hash-key" not in text
    settings = load_settings(SETTINGS_FILE)
    assert [(p.name, p.slots) for p in settings.pools] == [("salesforce_api", 4)]
    assert (settings.connections, settings.variables) == ((), ())
    for conn_id in SECRET_CONNECTIONS:  # the file tells where each one comes from instead
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in text


def test_repo_settings_apply_through_airflows_cli(airflow_db):
    done = apply_settings(load_settings(SETTINGS_FILE))
    assert [r.args[1:3] for r in done] == [["pools", "import"]]
    assert "Uploaded 1 pool(s)" in done[0].stdout
    slots, description = db_pool("salesforce_api")
    assert slots == 4 and "shared by all retention policies" in description
    apply_settings(load_settings(SETTINGS_FILE))  # again: the same single row
    assert db_pool("salesforce_api")[0] == 4


def test_sandbox_env_exports_every_connection_as_json(sandbox):
    from airflow.sdk import BaseHook

    assert "RETENTION_HASH_KEY" not in sandbox.env
    for conn_id in SECRET_CONNECTIONS:
        json.loads(sandbox.env[f"AIRFLOW_CONN_{conn_id.upper()}"])  # JSON form, not a URI
    sf = BaseHook.get_connection("salesforce_default")
    assert (sf.conn_type, sf.login, sf.password) == ("salesforce", sandbox.env["SALESFORCE_USERNAME"], None)
    assert sf.extra_dejson["private_key_file_path"] == sandbox.env["SALESFORCE_PRIVATE_KEY_FILE"]
    store = BaseHook.get_connection("retention_store")
    assert (store.conn_type, store.host, store.port, store.schema) == (
        "postgres", "127.0.0.1", int(sandbox.env["SANDBOX_PG_PORT"]), "retention_store")
    connect = BaseHook.get_connection("heroku_connect_default")
    assert (connect.conn_type, connect.password) == ("heroku_connect", sandbox.env["HEROKU_CONNECT_TOKEN"])
    assert connect.extra_dejson["app_name"] == sandbox.env["HEROKU_CONNECT_APP_NAME"]
    hash_key = BaseHook.get_connection("retention_hash_key")
    assert hash_key.conn_type == "generic" and hash_key.password


def test_the_api_server_reaches_connect_with_the_environments_connection(airflow_db, sandbox, monkeypatch):
    """The UI's "Test" button runs in the API server's secrets search path: the AIRFLOW_CONN_* variable is found
    there too, with no row in the metadata DB."""
    from airflow.models import Connection

    from retention.hooks.heroku_connect import HerokuConnectHook

    assert db_rows(Connection, Connection.conn_id, "heroku_connect_default") == []
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
    ok, message = HerokuConnectHook().test_connection()
    assert ok, message


# --- the file's sections through airflow ... import ------------------------------------------------------

SETTINGS = """
airflow:
  pools:
    - pool_name: test_loader_pool
      pool_slot: {slots}
      pool_description: a test pool
  connections:
    - conn_id: test_loader_db
      conn_type: postgres
      conn_host: db.example.com
      conn_port: 5433
      conn_login: app
      conn_extra:
        sslmode: require
        options: -c statement_timeout=5000
    - conn_id: test_loader_uri
      conn_uri: postgresql://reader@replica.example.com:5432/store
    - conn_id: test_loader_json_extra
      conn_type: generic
      conn_extra: '{{"endpoint": "https://api.example.com"}}'
  variables:
    - variable_name: test_loader_channel
      variable_value: "#data-retention"
    - variable_name: test_loader_limits
      variable_value: {{max_records: {max_records}, objects: [Contact, Lead]}}
"""


def test_sections_apply_with_airflows_import_commands_and_update_in_place(clean_test_entries, tmp_path):
    path = write(tmp_path, SETTINGS.format(slots=3, max_records=50000))
    done = apply_settings(load_settings(path))
    assert [r.args[1:3] for r in done] == [["pools", "import"], ["variables", "import"], ["connections", "import"]]
    assert db_pool("test_loader_pool") == (3, "a test pool")
    assert db_connection("test_loader_db") == {
        "conn_type": "postgres", "host": "db.example.com", "schema": None, "login": "app", "password": None,
        "port": 5433, "extra": {"sslmode": "require", "options": "-c statement_timeout=5000"},
    }
    uri = db_connection("test_loader_uri")
    assert (uri["conn_type"], uri["login"], uri["host"], uri["schema"]) == (
        "postgres", "reader", "replica.example.com", "store")
    assert db_connection("test_loader_json_extra")["extra"] == {"endpoint": "https://api.example.com"}
    assert db_variable("test_loader_channel") == "#data-retention"
    assert json.loads(db_variable("test_loader_limits")) == {"max_records": 50000, "objects": ["Contact", "Lead"]}

    # An edited file updates the same rows (the db_* helpers assert there is exactly one).
    apply_settings(load_settings(write(tmp_path, SETTINGS.format(slots=6, max_records=10))))
    assert db_pool("test_loader_pool") == (6, "a test pool")
    assert json.loads(db_variable("test_loader_limits"))["max_records"] == 10
    assert db_connection("test_loader_db")["port"] == 5433


def test_import_files_are_in_the_commands_formats(tmp_path):
    settings = load_settings(write(tmp_path, SETTINGS.format(slots=3, max_records=1)))
    out = tmp_path / "out"
    out.mkdir()
    commands = import_files(settings, out)
    assert commands == [
        ["pools", "import", str(out / "pools.json")],
        ["variables", "import", "--action-on-existing-key", "overwrite", str(out / "variables.json")],
        ["connections", "import", "--overwrite", str(out / "connections.json")],
    ]
    assert json.loads((out / "pools.json").read_text()) == {
        "test_loader_pool": {"slots": 3, "description": "a test pool"}}
    connections = json.loads((out / "connections.json").read_text())
    assert connections["test_loader_uri"] == "postgresql://reader@replica.example.com:5432/store"
    assert connections["test_loader_db"]["extra_dejson"]["sslmode"] == "require"
    assert json.loads((out / "variables.json").read_text())["test_loader_channel"] == "#data-retention"
    assert import_files(load_settings(write(tmp_path, "airflow: {}\n")), out) == []


def test_cli_applies_and_reports(clean_test_entries, tmp_path):
    path = write(tmp_path, """
airflow:
  pools:
    - pool_name: test_loader_cli
      pool_slot: 2
      pool_description: from the CLI
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "retention.settings_loader", str(path)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "airflow pools import: Uploaded 1 pool(s)" in out.stdout
    assert db_pool("test_loader_cli") == (2, "from the CLI")

    # Airflow cannot reach its database: the command's own error, no traceback of ours.
    broken = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] + "_missing"}
    out = subprocess.run(command, env=broken, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "error: pools import failed (did you run 'airflow db migrate'?)" in out.stderr
    assert "airflow_missing" in out.stderr

    secret = write(tmp_path, "airflow:\n  connections:\n    - {conn_id: test_loader_cli, conn_type: generic, "
                             "conn_password: hunter2}\n")
    out = subprocess.run([*command[:-1], str(secret)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "conn_password: secrets are not committed: give the connection as AIRFLOW_CONN_TEST_LOADER_CLI" in out.stderr
    assert "hunter2" not in out.stdout + out.stderr and "Traceback" not in out.stderr


# --- clear errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_password: pw\n",
     r"\(x\)\.conn_password: secrets are not committed: give the connection as AIRFLOW_CONN_X \(JSON or URI\)"),
    ("airflow:\n  connections:\n    - conn_id: store\n      conn_uri: postgres://u:pw@h/db\n",
     r"\(store\)\.conn_uri: holds a password; secrets are not committed: .*AIRFLOW_CONN_STORE"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_login: ${USER}\n",
     r"airflow\.connections\[0\]\.conn_login: '\$\{USER\}' would be stored literally \(the Astro CLI does not"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_extra:\n"
     "        token: ${TOKEN:-x}\n", r"airflow\.connections\[0\]\.conn_extra\.token: '\$\{TOKEN:-x\}' would be"),
    ("airflow:\n  pools:\n    - pool_name: a\n      pool_slot: ${SLOTS}\n",
     r"airflow\.pools\[0\]\.pool_slot: '\$\{SLOTS\}' would be stored literally"),
    ("airflow:\n  variables:\n    - variable_name: v\n      variable_value: [a, '${B']\n",
     r"airflow\.variables\[0\]\.variable_value\[1\]: '\$\{B' would be stored literally"),
])
def test_secrets_and_placeholders_are_refused(tmp_path, text, expected):
    with pytest.raises(SettingsError, match=expected):
        load_settings(write(tmp_path, text))


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
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_port: http\n",
     r"\(x\)\.conn_port: expected an integer, got 'http'"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: generic\n      conn_extra: '{not json'\n",
     r"\(x\)\.conn_extra: expected a mapping or a JSON object"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: mysql\n      conn_uri: postgres://h/db\n",
     r"conn_type 'mysql' disagrees with the conn_uri scheme 'postgres'"),
    ("airflow:\n  connections:\n    - conn_id: x\n      conn_uri: postgres://h/db\n      conn_login: u\n",
     r"conn_uri cannot be combined with conn_login"),
    ("airflow:\n  variables:\n    - variable_name: v\n      variable_value: 1\n    - variable_name: v\n"
     "      variable_value: 2\n", r"airflow\.variables: declared more than once: v"),
])
def test_malformed_files_fail_naming_the_key(tmp_path, text, expected):
    with pytest.raises(SettingsError, match=expected):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError, match=r"nope\.yaml: cannot read settings file"):
        load_settings(tmp_path / "nope.yaml")


def test_empty_file_is_empty_settings(tmp_path):
    settings = load_settings(write(tmp_path, "# nothing yet\n"))
    assert (settings.connections, settings.pools, settings.variables) == ((), (), ())


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
