"""The ``[retention]`` section of Airflow's configuration, which this project's provider declares.

Set an option as Airflow does any other: ``AIRFLOW__RETENTION__POLICIES_DIR``, ``[retention] policies_dir``
in ``airflow.cfg``, a ``_CMD``/``_SECRET`` variant, and see it with ``airflow config list --section
retention``. The ``RETENTION_<OPTION>`` environment variables of earlier releases still work for one more
release, with a DeprecationWarning, while the option is left at its default.

This module imports nothing heavy: Airflow's ``conf`` is imported when an option is read, and is already
loaded in every Airflow process.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

SECTION = "retention"
# The release that declared the section; the RETENTION_* aliases go in the release after it.
VERSION_ADDED = "0.1.0"

# Option -> (description, example, default). provider.py publishes these to Airflow, so `airflow config list`
# shows the same defaults that get() falls back to when the provider is not registered.
OPTIONS: dict[str, tuple[str, str | None, str]] = {
    "policies_dir": (
        "Folder of the retention policy files (*.yaml); each becomes the DAG retention__<id>. "
        "Empty: include/policies in the project.",
        "/usr/local/airflow/include/policies",
        "",
    ),
    "alert_emails": (
        "Comma-separated e-mail addresses alerted on a failed run of any policy that has no alerts: key of its "
        "own, and of the store purge DAG. Mail goes through the SMTP connection, from its own sender.",
        "privacy-team@example.com, data-oncall@example.com",
        "",
    ),
    "alert_slack_conn_id": (
        "Slack incoming-webhook connection alerted like alert_emails. Empty: no Slack alerts.",
        "slack_retention",
        "",
    ),
    "max_api_share": (
        "The largest share (0-1] of the org's remaining daily API requests, Bulk API batches and Bulk query jobs "
        "(its /limits) that one policy run may spend; a run that would spend more fails before touching anything. "
        "A policy's guards.max_api_share overrides it.",
        "0.05",
        "0.1",
    ),
    "bulk_poll_interval": (
        "Seconds before the first status check of a Salesforce Bulk job; later checks wait twice as long as the one "
        "before, at most 30 s (an ingest job gets one check more when the records it reports processed say it ends "
        "sooner). Every check is an API call: a shorter first wait answers a small job sooner and spends more calls "
        "on a long one (the API budget counts them from this value).",
        "1.0",
        "0.5",
    ),
    "data_docs_dir": (
        "Folder of the Great Expectations Data Docs that each validation writes, one subfolder per policy. "
        "Empty: data_docs under AIRFLOW_HOME.",
        "/usr/local/airflow/data_docs",
        "",
    ),
}


def get(option: str) -> str:
    """The option's value: Airflow's configuration, else the deprecated ``RETENTION_<OPTION>`` variable (with a
    DeprecationWarning) while the option is at its default, else the default."""
    value = get_configured(option)
    if value is not None:
        return value
    alias = f"RETENTION_{option.upper()}"
    if alias in os.environ:
        warnings.warn(
            f"{alias} is deprecated and is read for one more release: set AIRFLOW__{SECTION.upper()}__"
            f"{option.upper()} (or [{SECTION}] {option} in airflow.cfg) instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return os.environ[alias]
    return OPTIONS[option][2]


def source(option: str) -> str:
    """How a user sets the option, for error messages: the deprecated variable while it is in use."""
    alias = f"RETENTION_{option.upper()}"
    if alias in os.environ and get_configured(option) is None:
        return alias
    return f"[{SECTION}] {option}"


def number(option: str, *, above: float, at_most: float, unit: str = "") -> float:
    """A numeric option in (``above``, ``at_most``]; anything else is a ValueError naming the option, where it is
    set and what it takes."""
    text = get(option)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not above < value <= at_most:  # also refuses nan and inf
        raise ValueError(f"{source(option)} is {text!r}: expected a number{unit} above {above:g} and at most "
                         f"{at_most:g}")
    return value


def get_configured(option: str) -> str | None:
    """The option as Airflow's configuration sets it, None when it is at its default."""
    from airflow.configuration import conf

    value = conf.get(SECTION, option, fallback=None)
    return None if value is None or value == OPTIONS[option][2] else value


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of our provider info: Airflow's config.yml shape for one section."""
    return {
        SECTION: {
            "description": "Salesforce retention policies: where they live, who is alerted, where reports go.\n",
            "options": {
                name: {"description": description + "\n", "version_added": VERSION_ADDED, "type": "string",
                       "example": example, "default": default}
                for name, (description, example, default) in OPTIONS.items()
            },
        }
    }


# Retries are Airflow's own ([core] default_task_retries and default_task_retry_delay); earlier releases read
# these variables instead, and a DAG still honours them for one more release.
_RETRY_ALIASES = {
    "RETENTION_TASK_RETRIES": ("retries", "default_task_retries"),
    "RETENTION_RETRY_DELAY_SECONDS": ("retry_delay", "default_task_retry_delay"),
}


def deprecated_retry_args() -> dict[str, Any]:
    """``default_args`` from the deprecated retry variables that are set (each with a DeprecationWarning)."""
    import datetime as dt

    args: dict[str, Any] = {}
    for alias, (arg, core_option) in _RETRY_ALIASES.items():
        if alias not in os.environ:
            continue
        warnings.warn(f"{alias} is deprecated and is read for one more release: set "
                      f"AIRFLOW__CORE__{core_option.upper()} (Airflow's [core] {core_option}) instead",
                      DeprecationWarning, stacklevel=2)
        value = float(os.environ[alias])
        args[arg] = dt.timedelta(seconds=value) if arg == "retry_delay" else int(value)
    return args
