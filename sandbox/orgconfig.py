"""What differs from one real org to another: its licences, its settings and the API user's permissions.

The sandbox starts as a new Enterprise org would be set up for this product (Privacy Center licensed, the
API user an administrator), with the platform's defaults where they are documented; tests and the preflight
switch single items off through ``/__sandbox/org`` to meet the org a team really has.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields

# The API user's permissions as UserPermissionAccess reports them ("Permissions<Name>": whether the current
# user has it), UserPermissionAccess in the Object Reference (API 41.0+); names from the permission set fields.
DEFAULT_PERMISSIONS = {
    "PermissionsApiEnabled": True,
    "PermissionsModifyAllData": True,
    "PermissionsBulkApiHardDelete": True,
    # "Only users with the View and Edit Converted Leads permission can update converted lead records."
    "PermissionsAllowViewEditConvertedLeads": False,
    "PermissionsViewSetup": True,
}

# Bulk API 2.0's upload ceiling (see OrgConfig.ingest_upload_max_bytes).
INGEST_UPLOAD_MAX_BYTES = 100_000_000


@dataclass
class OrgConfig:
    """:param privacy_center: the org has the Privacy Center license and the API user "Manage Privacy Hold";
        without them PrivacyHold and PrivacyHoldReason do not exist for the user.
    :param soap_login: Setup's "Enable SOAP API login()"; "disabled by default for orgs created in Winter '26
        and later" (SOAP API Developer Guide, login()), and unavailable from API 65.0 whatever the setting.
    :param jwt_preapproved: the connected app's "Admin approved users are pre-authorized" with the API user's
        profile approved; the JWT bearer flow "does require prior approval of the client app".
    :param client_credentials_user: the connected app's run-as user for the client credentials flow (None:
        the flow is not enabled for the app).
    :param permissions: the API user's permissions (``Permissions<Name>``: bool).
    :param ingest_upload_max_bytes: the largest CSV one Bulk 2.0 ingest upload may carry. Salesforce: "A request
        can provide CSV data that does not in total exceed 150 MB of base64 encoded content ... upload data that
        does not exceed 100 MB" (Bulk API 2.0, Upload Job Data); the stricter reading is the default, 100 MB as
        10^8 bytes. Not an org setting in Salesforce: tests lower it to exercise splitting without 100 MB.
    """

    privacy_center: bool = True
    soap_login: bool = False
    jwt_preapproved: bool = True
    client_credentials_user: str | None = None
    permissions: dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_PERMISSIONS))
    ingest_upload_max_bytes: int = INGEST_UPLOAD_MAX_BYTES


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class OrgSettings:
    """The org's configuration, shared by every request handler and changed at run time by the admin endpoint."""

    def __init__(self, config: OrgConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or OrgConfig()
        self._initial = asdict(self._config)

    @property
    def config(self) -> OrgConfig:
        return self._config

    def has(self, permission: str) -> bool:
        with self._lock:
            return bool(self._config.permissions.get(permission, False))

    def update(self, changes: dict) -> dict:
        """Apply ``{"privacy_center": false, "permissions": {"PermissionsBulkApiHardDelete": false}}``-style
        changes; ``{"reset": true}`` restores the start. Raises ValueError naming an unknown setting."""
        known = {f.name for f in fields(OrgConfig)}
        with self._lock:
            if changes.get("reset"):
                self._config = OrgConfig(**{**self._initial, "permissions": dict(self._initial["permissions"])})
                changes = {k: v for k, v in changes.items() if k != "reset"}
            for key, value in changes.items():
                if key not in known:
                    raise ValueError(f"unknown org setting {key!r}; expected one of {', '.join(sorted(known))}")
                if key == "permissions":
                    if not isinstance(value, dict) or not all(str(k).startswith("Permissions") for k in value):
                        raise ValueError("permissions must map Permissions<Name> to true or false")
                    self._config.permissions.update({k: bool(v) for k, v in value.items()})
                elif key == "ingest_upload_max_bytes" and not _positive_int(value):
                    raise ValueError("ingest_upload_max_bytes must be a whole number of bytes above 0")
                else:
                    setattr(self._config, key, value)
            return asdict(self._config)

    def snapshot(self) -> dict:
        with self._lock:
            return asdict(self._config)
