"""Sandbox settings, read from ``SANDBOX_*`` environment variables with working local defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The API version the sandbox's exported connection and clients use: the product's default (see
# retention.hooks.salesforce_bulk.DEFAULT_API_VERSION), a current release past SOAP login()'s last version.
API_VERSION = "66.0"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    home: Path
    pg_port: int
    sf_port: int
    connect_port: int
    sync_interval: float
    username: str = "retention@sandbox.example"
    password: str = "sandbox-password"
    security_token: str = "sandbox-token"
    consumer_key: str = "sandbox-consumer-key"
    consumer_secret: str = "sandbox-consumer-secret"
    connect_token: str = "sandbox-heroku-token"
    hash_key: str = "sandbox-retention-hash-key"
    connection_id: str = "5f1c6a2e-0b7d-4c1e-9a55-5a0d1e2c3b4a"
    org_id: str = "00DDn0000000001EAA"
    connect_objects: tuple[str, ...] = ("Account", "Contact", "Lead", "Case", "PrivacyHold", "PrivacyHoldReason")

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=Path(os.environ.get("SANDBOX_HOME", REPO / ".sandbox")).resolve(),
            pg_port=_int("SANDBOX_PG_PORT", 54320),
            sf_port=_int("SANDBOX_SF_PORT", 18443),
            connect_port=_int("SANDBOX_CONNECT_PORT", 18444),
            sync_interval=float(os.environ.get("SANDBOX_SYNC_INTERVAL", "2")),
        )

    @property
    def instance_url(self) -> str:
        return f"https://localhost:{self.sf_port}"

    @property
    def login_domain(self) -> str:
        """simple-salesforce's ``domain`` that reaches the sandbox's token endpoint: the client builds
        ``https://{domain}.salesforce.com/services/oauth2/token``, and the fragment after ``#`` is never sent."""
        return f"localhost:{self.sf_port}/services/oauth2/token#"

    @property
    def connect_api_url(self) -> str:
        return f"https://localhost:{self.connect_port}/api/v3"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def pg_dir(self) -> Path:
        return self.home / "postgres"
