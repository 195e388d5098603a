"""Sandbox settings, read from ``SANDBOX_*`` environment variables with working local defaults."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The API version the sandbox's exported connection and clients use: the product's default (see
# retention.hooks.salesforce_bulk.DEFAULT_API_VERSION), a current release past SOAP login()'s last version.
API_VERSION = "66.0"

# The Heroku Connect mappings the sandbox creates: sObject -> the fields its mapping selects. Real
# Connect "syncs only the fields a mapping selects" (https://devcenter.heroku.com/articles/managing-heroku-connect-mappings),
# so this is a realistic selection, not every field: what the example policies in include/policies/
# read (their date fields, filters, retained and masked fields) plus the relations a data team maps,
# with CreatedDate and Name, which Connect pre-selects ("recommended ... but can be deselected").
# Connect's own required fields (Id as sfid, SystemModstamp, IsDeleted) are always added by the sync
# (sandbox.connect.REQUIRED_FIELDS), so they are not repeated here. Mapping another object is one
# entry here. SANDBOX_CONNECT_MAPPINGS overrides entries: {"Contact": ["Email", ...], "Account": null}
# (null unmaps the object).
CONNECT_MAPPINGS: dict[str, tuple[str, ...]] = {
    "Account": ("CreatedDate", "Name", "BillingCountry", "AnnualRevenue", "Industry", "LastModifiedDate"),
    "Contact": ("CreatedDate", "Name", "AccountId", "FirstName", "LastName", "Email", "Birthdate",
                "MailingCountry", "LeadSource", "LastModifiedDate"),
    "Lead": ("CreatedDate", "Name", "FirstName", "LastName", "Company", "Email", "Phone", "Country",
             "IsConverted"),
    "Case": ("CreatedDate", "CaseNumber", "AccountId", "ContactId", "Subject", "SuppliedEmail", "Status",
             "IsClosed", "ClosedDate"),
    "PrivacyHold": ("CreatedDate", "Name", "ReferenceRecordId", "PrivacyHoldReasonId", "IsActive", "EndDate",
                    "RegisteredDate"),
    "PrivacyHoldReason": ("CreatedDate", "Name", "Detail"),
    "Opportunity": ("CreatedDate", "Name", "AccountId", "StageName", "CloseDate", "Amount", "IsClosed", "IsWon",
                    "LastModifiedDate"),
}


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def connect_mappings_from_env(raw: str | None) -> dict[str, tuple[str, ...]]:
    """``CONNECT_MAPPINGS`` with the entries of ``SANDBOX_CONNECT_MAPPINGS`` (JSON) replacing theirs."""
    mappings = dict(CONNECT_MAPPINGS)
    if not raw:
        return mappings
    try:
        override = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"SANDBOX_CONNECT_MAPPINGS is not JSON: {exc}") from None
    if not isinstance(override, dict):
        raise ValueError('SANDBOX_CONNECT_MAPPINGS must be a JSON object: {"Contact": ["Email", ...]}')
    for name, fields in override.items():
        if fields is None:
            mappings.pop(name, None)
        elif isinstance(fields, list) and all(isinstance(f, str) for f in fields):
            mappings[name] = tuple(fields)
        else:
            raise ValueError(f"SANDBOX_CONNECT_MAPPINGS: {name}: expected a list of field names or null")
    return mappings


@dataclass(frozen=True)
class Settings:
    home: Path
    pg_port: int
    sf_port: int
    connect_port: int
    # Seconds between Connect polls of each mapping (a new mapping's sf_polling_seconds). This deliberately
    # undercuts real Connect (600 s by default, per mapping; 10 minutes at least on the demo plan:
    # https://devcenter.heroku.com/articles/heroku-connect) so that the demo and the tests do not wait
    # minutes; a test that needs Connect's real staleness sets a long interval with PUT /mappings/{id}.
    sync_interval: float
    username: str = "retention@sandbox.example"
    password: str = "sandbox-password"
    security_token: str = "sandbox-token"
    consumer_key: str = "sandbox-consumer-key"
    consumer_secret: str = "sandbox-consumer-secret"
    connect_token: str = "sandbox-heroku-token"
    # The Heroku user the token belongs to (POST /auth answers with it).
    connect_user_email: str = "data-team@sandbox.example"
    connect_app_name: str = "retention-sandbox"
    connect_resource_name: str = "herokuconnect-sandbox"
    hash_key: str = "sandbox-retention-hash-key"
    # AES-256 key of encrypted retained fields (base64 of 32 bytes); a real one comes from `openssl rand -base64 32`.
    encryption_key: str = "c2FuZGJveCByZXRlbnRpb24gZW5jcnlwdGlvbiBrZXk="
    connection_id: str = "5f1c6a2e-0b7d-4c1e-9a55-5a0d1e2c3b4a"
    org_id: str = "00DDn0000000001EAA"
    connect_mappings: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(CONNECT_MAPPINGS))

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=Path(os.environ.get("SANDBOX_HOME", REPO / ".sandbox")).resolve(),
            pg_port=_int("SANDBOX_PG_PORT", 54320),
            sf_port=_int("SANDBOX_SF_PORT", 18443),
            connect_port=_int("SANDBOX_CONNECT_PORT", 18444),
            sync_interval=float(os.environ.get("SANDBOX_SYNC_INTERVAL", "2")),
            connect_mappings=connect_mappings_from_env(os.environ.get("SANDBOX_CONNECT_MAPPINGS")),
        )

    @property
    def connect_objects(self) -> tuple[str, ...]:
        return tuple(self.connect_mappings)

    @property
    def instance_url(self) -> str:
        return f"https://localhost:{self.sf_port}"

    @property
    def login_domain(self) -> str:
        """simple-salesforce's ``domain`` that reaches the sandbox's token endpoint: the client builds
        ``https://{domain}.salesforce.com/services/oauth2/token``, and the fragment after ``#`` is never sent."""
        return f"localhost:{self.sf_port}/services/oauth2/token#"

    @property
    def connect_url(self) -> str:
        """The Connect server's base URL: its region URL, and the discovery service (hc-central) too."""
        return f"https://localhost:{self.connect_port}"

    @property
    def connect_api_url(self) -> str:
        """The connection's API root: region URL + ``/api/v3``."""
        return f"{self.connect_url}/api/v3"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def pg_dir(self) -> Path:
        return self.home / "postgres"
