"""Airflow provider info for this project: registers the ``heroku_connect`` connection type and declares the
``[retention]`` configuration section (``airflow config list --section retention``).

Airflow lists a custom connection type in the UI's connection form (and in ``airflow providers
hooks``) only when an installed distribution declares it through the ``apache_airflow_provider`` entry
point; ``pyproject.toml`` points that entry point here and ``pip install -e .`` installs it.

Airflow calls :func:`get_provider_info` in every process that initialises its providers, so this module
imports nothing heavy: the hook class is named by its dotted path and imported lazily by Airflow, and the
section's options come from :mod:`retention.config`, which imports nothing at all.
"""

from __future__ import annotations

from typing import Any

from retention.config import provider_config

PACKAGE_NAME = "salesforce-retention"  # must equal the distribution name in pyproject.toml
VERSION = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider info in the shape of ``airflow.providers.*.get_provider_info.get_provider_info()``."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Salesforce Retention",
        "description": "Salesforce data retention policies as Airflow DAGs, with a Heroku Connect hook.\n",
        "versions": [VERSION],
        "integrations": [
            {
                "integration-name": "Heroku Connect",
                "external-doc-url": "https://devcenter.heroku.com/articles/heroku-connect-api",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Heroku Connect",
                "python-modules": ["retention.hooks.heroku_connect"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "retention.hooks.heroku_connect.HerokuConnectHook",
                "hook-name": "Heroku Connect",
                "connection-type": "heroku_connect",
                "conn-fields": {
                    "app_name": {
                        "label": "Heroku app",
                        "schema": {"type": ["string", "null"]},
                    },
                    "resource_name": {
                        "label": "Connect add-on (when the app has several)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "discovery_url": {
                        "label": "Discovery URL (default https://hc-central.heroku.com)",
                        "schema": {"type": ["string", "null"]},
                    },
                    "connection_id": {
                        "label": "Connect connection ID",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "API URL", "password": "Heroku API token"},
                    "placeholders": {
                        "host": "empty: found by discovery from the app (or a region API root, with connection_id)",
                        "password": "heroku authorizations:create",
                    },
                },
            }
        ],
        "config": provider_config(),
    }
