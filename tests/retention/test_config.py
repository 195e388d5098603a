"""The [retention] section of Airflow's configuration: declared by our provider, listed by the real
`airflow config list`, set with AIRFLOW__RETENTION__*, with the RETENTION_* variables of earlier releases
still read (with a DeprecationWarning) for one release; task retries are Airflow's own [core] defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retention import config

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
OPTIONS = ("policies_dir", "alert_emails", "alert_slack_conn_id", "max_api_share", "bulk_poll_interval",
           "data_docs_dir")


def airflow_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The real Airflow CLI in a fresh home, finding this checkout's provider info first on PYTHONPATH (the
    editable install's entry point names the module ``retention.provider``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETENTION_"))}
    out = subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, timeout=300,
        env={**base, "AIRFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", **env})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def listed(text: str) -> dict[str, str]:
    """``option = value`` lines of ``airflow config list --show-values`` output."""
    pairs = (line.partition("=") for line in text.splitlines() if not line.startswith("#"))
    return {key.strip(): value.strip() for key, equals, value in pairs if equals}


def test_airflow_config_list_shows_the_section_with_defaults_descriptions_and_overrides(tmp_path):
    out = airflow_cli(tmp_path, "config", "list", "--section", "retention", "--show-values",
                      "--include-descriptions", "--include-examples", "--include-sources")
    assert out.stdout.lstrip().startswith("[retention]"), out.stdout
    values = listed(out.stdout)
    assert values == {name: config.OPTIONS[name][2] for name in OPTIONS}
    assert "Source: provider-metadata-fallback-defaults" in out.stdout
    assert "# Example: policies_dir = /usr/local/airflow/include/policies" in out.stdout
    assert "Folder of the retention policy files" in out.stdout

    out = airflow_cli(tmp_path, "config", "list", "--section", "retention", "--show-values", "--include-sources",
                      AIRFLOW__RETENTION__ALERT_EMAILS="privacy-team@example.com",
                      AIRFLOW__RETENTION__POLICIES_DIR="/srv/policies")
    values = listed(out.stdout)
    assert (values["alert_emails"], values["policies_dir"]) == ("privacy-team@example.com", "/srv/policies")
    assert "# Source: env var\nalert_emails = privacy-team@example.com" in out.stdout

    out = airflow_cli(tmp_path, "config", "get-value", "retention", "alert_slack_conn_id",
                      AIRFLOW__RETENTION__ALERT_SLACK_CONN_ID="slack_retention")
    assert out.stdout.strip() == "slack_retention"


def test_the_deprecated_variable_is_read_with_a_warning_in_a_real_process(tmp_path):
    probe = "from retention import config; print(config.get('policies_dir'))"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__RETENTION", "RETENTION_"))}
    env = {**base, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", "RETENTION_POLICIES_DIR": "/old/policies"}
    def run() -> tuple[str, str]:
        """The value printed, and everything else the process wrote (Airflow logs warnings to stdout)."""
        out = subprocess.run([sys.executable, "-W", "default::DeprecationWarning", "-c", probe], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        *logged, value = out.stdout.strip().splitlines()
        return value, "\n".join(logged) + out.stderr

    value, logged = run()
    assert value == "/old/policies"
    assert "RETENTION_POLICIES_DIR is deprecated" in logged and "AIRFLOW__RETENTION__POLICIES_DIR" in logged

    env["AIRFLOW__RETENTION__POLICIES_DIR"] = "/new/policies"  # Airflow's own setting wins, without a warning
    value, logged = run()
    assert value == "/new/policies" and "RETENTION_POLICIES_DIR is deprecated" not in logged


@pytest.fixture
def clean_env(monkeypatch):
    for name in OPTIONS:
        monkeypatch.delenv(f"AIRFLOW__RETENTION__{name.upper()}", raising=False)
        monkeypatch.delenv(f"RETENTION_{name.upper()}", raising=False)
    return monkeypatch


def test_get_reads_airflow_config_then_the_deprecated_variable_then_the_default(clean_env, recwarn):
    assert config.get("alert_emails") == ""
    assert config.source("alert_emails") == "[retention] alert_emails"
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]

    clean_env.setenv("RETENTION_ALERT_EMAILS", "old@example.com")
    with pytest.warns(DeprecationWarning, match=r"RETENTION_ALERT_EMAILS is deprecated.*"
                                                r"AIRFLOW__RETENTION__ALERT_EMAILS"):
        assert config.get("alert_emails") == "old@example.com"
    assert config.source("alert_emails") == "RETENTION_ALERT_EMAILS"

    clean_env.setenv("AIRFLOW__RETENTION__ALERT_EMAILS", "new@example.com")
    recwarn.clear()
    assert config.get("alert_emails") == "new@example.com"
    assert config.source("alert_emails") == "[retention] alert_emails"
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_alert_settings_come_from_the_section(clean_env):
    from retention import alerts

    assert alerts.global_settings() is None
    clean_env.setenv("AIRFLOW__RETENTION__ALERT_EMAILS", "a@example.com, b@example.com")
    clean_env.setenv("AIRFLOW__RETENTION__ALERT_SLACK_CONN_ID", "slack_retention")
    settings = alerts.global_settings()
    assert (settings.email, settings.slack_webhook_conn_id) == (["a@example.com", "b@example.com"], "slack_retention")
    clean_env.setenv("AIRFLOW__RETENTION__ALERT_EMAILS", "not-an-address")
    with pytest.raises(alerts.AlertSettingsError, match=r"^\[retention\] alert_emails: not an e-mail address"):
        alerts.global_settings()


def test_data_docs_dir_comes_from_the_section(clean_env, tmp_path):
    from airflow.configuration import AIRFLOW_HOME

    from retention.operators.validate_row_counts import data_docs_dir

    assert data_docs_dir("p") == Path(AIRFLOW_HOME) / "data_docs" / "p"
    clean_env.setenv("AIRFLOW__RETENTION__DATA_DOCS_DIR", str(tmp_path))
    assert data_docs_dir("p") == tmp_path / "p"


def test_task_retries_are_airflows_own_defaults(clean_env):
    """No retry count of our own: a deployment's [core] default_task_retries/default_task_retry_delay apply (read by
    Airflow when it starts, so checked in a process of its own), and the deprecated
    RETENTION_TASK_RETRIES/RETENTION_RETRY_DELAY_SECONDS still override them."""
    probe = "\n".join([
        "import warnings",
        "from retention.factory import build_dag",
        "from retention.policy import load_policy",
        "with warnings.catch_warnings(record=True) as caught:",
        "    warnings.simplefilter('always')",
        "    dag = build_dag(load_policy('include/policies/inactive_contacts.yaml'))",
        "print(sorted({(t.retries, t.retry_delay.total_seconds(), t.retry_exponential_backoff) for t in dag.tasks}),",
        "      'retries' in dag.default_args or 'retry_delay' in dag.default_args,",
        "      'WARNED' if any('AIRFLOW__CORE__DEFAULT_TASK_RETRIES' in str(w.message) for w in caught) else '')",
    ])

    def tasks_retry(**env: str) -> str:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW__CORE__DEFAULT_TASK_RETR", "RETENTION_TASK_RETRIES",
                                     "RETENTION_RETRY_DELAY"))}
        base["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO,
                             env={**base, **env}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1].strip()

    assert tasks_retry() == "[(0, 300.0, 2.0)] False"  # Airflow's own defaults
    assert tasks_retry(AIRFLOW__CORE__DEFAULT_TASK_RETRIES="2",
                       AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="1") == "[(2, 1.0, 2.0)] False"
    assert tasks_retry(AIRFLOW__CORE__DEFAULT_TASK_RETRIES="2", RETENTION_TASK_RETRIES="5",
                       RETENTION_RETRY_DELAY_SECONDS="7") == "[(5, 7.0, 2.0)] True WARNED"


def test_provider_info_declares_the_section_in_airflows_shape():
    from airflow.providers.postgres.get_provider_info import get_provider_info as postgres_info
    from airflow.providers_manager import _create_provider_info_schema_validator

    from retention.provider import get_provider_info

    info = get_provider_info()
    _create_provider_info_schema_validator().validate(info)
    (reference,) = postgres_info()["config"]["postgres"]["options"].values()
    section = info["config"]["retention"]
    assert set(section) == {"description", "options"} and tuple(section["options"]) == OPTIONS
    for option in section["options"].values():
        assert set(option) == set(reference) and option["type"] == "string"
