"""Preflight: before a team's first real run, check everything a policy run will meet, and say what to fix.

``python -m retention preflight`` asks the configured org, store, Heroku Connect and Airflow what each policy
needs: the login and API version; the API user's permissions (API Enabled, Modify All Data as Privacy Center
requires, Bulk API Hard Delete for ``hard_delete``, Privacy Center for holds); each policy's object, fields,
updateable mask fields and cascade children in describe; each Connect mapping's fields; the store's schemas and
the grants the pipeline role relies on (made by ``python -m retention store-setup``); the encryption key when a
policy encrypts; the ``salesforce_api`` pool. It prints one line per check and exits non-zero when something is not
ready. It only reads: nothing is created, changed or deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retention.policy import Policy

OK, WARN, FAIL = "ok", "warn", "FAIL"
# Permissions the API user needs (UserPermissionAccess, "Permissions<Name>": whether the current user has it).
# Privacy Center's retention requires Modify All Data of whoever runs it; API Enabled is needed for any call.
REQUIRED_PERMISSIONS = {
    "PermissionsApiEnabled": "API Enabled",
    "PermissionsModifyAllData": "Modify All Data (Privacy Center requires it of whoever runs retention)",
}
HARD_DELETE_PERMISSION = ("PermissionsBulkApiHardDelete", "Bulk API Hard Delete")
POOL = "salesforce_api"
STORE_SCHEMAS = ("cache", "retention", "retention_staging")
ANALYST = "retention_analyst"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, for what, how it went, and what to do."""

    area: str
    target: str
    status: str
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, area: str, target: str, status: str, detail: str) -> None:
        self.checks.append(Check(area, target, status, detail))

    @property
    def ready(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def table(self) -> str:
        widths = [max(len(getattr(c, name)) for c in self.checks) for name in ("area", "target", "status")]
        lines = []
        for c in self.checks:
            head = "  ".join(v.ljust(w) for v, w in zip((c.area, c.target, c.status), widths, strict=True))
            lines.append(f"{head}  {c.detail}")
        failed = sum(c.status == FAIL for c in self.checks)
        warned = sum(c.status == WARN for c in self.checks)
        lines.append("")
        lines.append("ready: every check passed" + (f" ({warned} warnings)" if warned else "") if self.ready
                     else f"not ready: {failed} check(s) failed; fix them before unpausing the policy DAGs")
        return "\n".join(lines)


def _guard(report: Report, area: str, target: str, action: Callable[[], Any]) -> Any:
    """Run one check's I/O; an exception is that check's failure, not the end of the report."""
    try:
        return action()
    except Exception as exc:  # the report shows every problem, not only the first
        report.add(area, target, FAIL, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        return None


def run(policies: list[Policy], *, salesforce_conn_id: str = "salesforce_default",
        store_conn_id: str = "retention_store", heroku_connect_conn_id: str = "heroku_connect_default",
        check_pool: bool = True) -> Report:
    report = Report()
    sf = _salesforce(report, salesforce_conn_id)
    if sf is not None:
        _permissions(report, sf, policies)
        for policy in policies:
            _policy(report, sf, policy)
    if any(p.source == "heroku_connect" for p in policies):
        _connect(report, heroku_connect_conn_id, policies)
    _store(report, store_conn_id)
    _encryption_key(report, policies)
    if check_pool:
        _pool(report)
    return report


# ------------------------------------------------------------------------------------------ Salesforce


def _salesforce(report: Report, conn_id: str):
    from retention.hooks.salesforce_bulk import SalesforceBulk2Hook

    hook = SalesforceBulk2Hook(conn_id)
    client = _guard(report, "salesforce", "login", lambda: hook.conn)
    if client is None:
        return None
    flow = {"jwt-bearer": "OAuth 2.0 JWT bearer", "client-credentials": "OAuth 2.0 client credentials",
            "password": "username and password"}.get(client.auth_type, client.auth_type)
    status = OK if client.auth_type in ("jwt-bearer", "client-credentials") else WARN
    detail = f"logged in to {client.sf_instance} with {flow}"
    if status == WARN:
        detail += ("; SOAP login() and the OAuth username-password flow are being retired (login() is gone from "
                   "API 65.0): configure the JWT bearer flow")
    report.add("salesforce", "login", status, detail)
    known = _guard(report, "salesforce", "api version", hook.api_versions)
    if known is not None:
        latest = max(known, key=lambda v: tuple(map(int, v.split("."))))
        if client.sf_version in known:
            report.add("salesforce", "api version", OK, f"{client.sf_version} (the org serves up to {latest})")
        else:
            report.add("salesforce", "api version", FAIL, f"{client.sf_version} is not served by the org (it serves "
                       f"{known[0]} to {latest}); set the connection's version extra")
    return hook


def _permissions(report: Report, sf, policies: list[Policy]) -> None:
    wanted = {**REQUIRED_PERMISSIONS}
    hard = [p.id for p in policies if p.action == "hard_delete"]
    if hard:
        wanted[HARD_DELETE_PERMISSION[0]] = HARD_DELETE_PERMISSION[1]
    granted = _guard(report, "permissions", "API user", lambda: sf.user_permissions(list(wanted)))
    if granted is None:
        return
    for name, label in wanted.items():
        if granted.get(name):
            report.add("permissions", label.split(" (")[0], OK, "granted to the API user")
        elif name == HARD_DELETE_PERMISSION[0]:
            report.add("permissions", HARD_DELETE_PERMISSION[1], FAIL,
                       f"missing; {', '.join(hard)} would fall back to a soft delete (records stay 15 days in the "
                       "Recycle Bin): grant it, or change the action to delete")
        else:
            report.add("permissions", label.split(" (")[0], FAIL, f"missing: grant {label} to the API user")
    holds = [p.id for p in policies if p.select.exclude_privacy_holds]
    if holds:
        describe = _guard(report, "permissions", "Privacy Center", lambda: sf.describe_or_none("PrivacyHold"))
        if describe is not None:
            report.add("permissions", "Privacy Center", OK, "PrivacyHold is readable (licence and Manage Privacy Hold)")
        elif not any(c.target == "Privacy Center" for c in report.checks):
            report.add("permissions", "Privacy Center", FAIL,
                       f"PrivacyHold is not available to the API user, and {', '.join(holds)} honour holds: assign "
                       "the Privacy Center licence and the Manage Privacy Hold permission (API 59.0+)")


def _policy(report: Report, sf, policy: Policy) -> None:
    from retention import cascade
    from retention.policy import check_against_describe

    target = f"policy {policy.id}"
    describe = _guard(report, "describe", target, lambda: sf.describe_or_none(policy.object))
    if describe is None:
        if not any(c.target == target for c in report.checks):
            report.add("describe", target, FAIL, f"{policy.object} is not an object the API user can read")
        return
    others = {}
    for name in policy.related_fields():
        others[name] = _guard(report, "describe", target, lambda name=name: sf.describe_or_none(name))
    problems = check_against_describe(policy, describe, others)
    for problem in problems:
        report.add("describe", target, FAIL, problem)
    if not problems:
        what = [f"{len(policy.referenced_fields())} fields of {policy.object}"]
        if policy.mask:
            what.append(f"{len(policy.mask)} updateable mask fields")
        if policy.cascade:
            what.append("cascade " + ", ".join(f"{c.object}.{c.relationship}" for c in policy.cascade))
        report.add("describe", target, OK, "; ".join(what) + " as the policy needs")
    for rel in cascade.undeclared(policy, describe):
        report.add("describe", target, WARN,
                   f"deleting {policy.object} also deletes {rel.child} records ({rel.name}); the policy does not "
                   f"retain them, so {policy.object} records that have any are kept back (declare {rel.child} "
                   "under cascade: to retain and delete them)")


# ---------------------------------------------------------------------------------------------- Connect


def _connect(report: Report, conn_id: str, policies: list[Policy]) -> None:
    from retention.hooks.heroku_connect import HerokuConnectHook

    hook = HerokuConnectHook(conn_id)
    detail = _guard(report, "connect", "connection", hook.connection_detail)
    if detail is None:
        return
    state = detail.get("state")
    healthy = state in ("IDLE", "POLLING_DB_CHANGES", "IMPORT_CONFIGURATION", "BUSY")
    report.add("connect", "connection", OK if healthy else FAIL,
               f"{detail.get('name', detail.get('id'))} is {state}, schema {detail.get('schema_name')}")
    for policy in policies:
        if policy.source != "heroku_connect":
            continue
        needed = {policy.object: policy.referenced_fields(), **policy.related_fields()}
        for name, fields in sorted(needed.items()):
            status = _guard(report, "connect", f"mapping {name}", lambda name=name: hook.sync_status(name))
            if status is None:
                continue
            missing = status.missing_fields(sorted(fields))
            if missing:
                report.add("connect", f"mapping {name}", FAIL,
                           f"does not sync {', '.join(missing)} ({policy.id} reads them): add them to the mapping "
                           f"in the Heroku Connect dashboard (Mappings, {name}, Edit)")
            else:
                report.add("connect", f"mapping {name}", OK, f"syncs what {policy.id} reads; {status.describe()}")


# ------------------------------------------------------------------------------------------------ store


def _store(report: Report, conn_id: str) -> None:
    from retention import store_setup
    from retention.hooks.store import MIRROR_SCHEMA, RetentionStoreHook

    def inspect():
        with RetentionStoreHook(conn_id).connect() as conn:
            role, superuser = conn.execute(
                "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            owns_ledger = conn.execute(  # pg_class, not to_regclass: that raises without USAGE on the schema
                "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n ON "
                "n.oid = c.relnamespace WHERE n.nspname = 'retention' AND c.relname = 'runs'").fetchone()
            analyst = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ANALYST,)).fetchone() is not None
            return role, superuser, bool(owns_ledger and owns_ledger[0]), store_setup.missing(conn, MIRROR_SCHEMA), \
                analyst

    found = _guard(report, "store", "connection", inspect)
    if found is None:
        return
    role, superuser, owns_ledger, lacking, analyst = found
    fix = f"run `{store_setup.SETUP_COMMAND}` once with the store owner's credential"
    if superuser or owns_ledger:
        report.add("store", "role", WARN, f"connects as {role}, " + ("a superuser" if superuser else
                   "the ledger's owner") + f", which could change or delete ledger rows: connect the tasks as the "
                   f"pipeline role ({store_setup.PIPELINE}, made and granted by {store_setup.SETUP_COMMAND})")
    else:
        report.add("store", "role", OK, f"connects as {role}, which does not own the ledger")
    by_object = {(lack.kind, lack.obj): lack for lack in lacking}
    for name in (*STORE_SCHEMAS, MIRROR_SCHEMA):
        lack = by_object.pop(("schema", name), None)
        if lack is None:
            report.add("store", f"schema {name}", OK, f"{role} may read it" if name == MIRROR_SCHEMA else
                       f"{role} may use it as the pipeline does")
        else:
            report.add("store", f"schema {name}", FAIL, f"{role} lacks {lack.describe()}: {fix}")
    report.add("store", "ledger and store tables", FAIL if by_object else OK,
               f"{role} lacks {'; '.join(lack.describe() for lack in by_object.values())}: {fix}" if by_object else
               f"{role} may append to the ledger and keep the store's own tables")
    report.add("store", f"credential {ANALYST}", OK if analyst else WARN,
               "exists: it will read the cache schema only" if analyst else
               f"missing: analysts have no read-only credential; create it once with `heroku pg:credentials:create "
               f"--name {ANALYST}` (not on Essential plans), then {fix}")


def _encryption_key(report: Report, policies: list[Policy]) -> None:
    """The key connection, when some policy encrypts retained fields: a run without it stops in extract."""
    from retention.encryption import KEY_CONN_ID, Keyring
    from retention.steps.load import needs_encryption_key

    users = [p.id for p in policies if needs_encryption_key(p)]
    if not users:
        return

    def read():
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(KEY_CONN_ID)
        return Keyring.from_connection(conn.password, conn.extra_dejson)

    keyring = _guard(report, "airflow", f"connection {KEY_CONN_ID}", read)
    if keyring is not None:
        report.add("airflow", f"connection {KEY_CONN_ID}", OK,
                   f"AES-256 key {keyring.current_id} (+{len(keyring.previous)} previous) for {', '.join(users)}")


def _pool(report: Report) -> None:
    def lookup():
        from airflow.models import Pool

        return Pool.get_pool(POOL)

    pool = _guard(report, "airflow", f"pool {POOL}", lookup)
    if pool is not None:
        report.add("airflow", f"pool {POOL}", OK, f"{pool.slots} slots shared by every policy's Salesforce calls")
    elif not any(c.target == f"pool {POOL}" for c in report.checks):
        report.add("airflow", f"pool {POOL}", FAIL, "missing: apply airflow_settings.yaml "
                   "(python -m retention.settings_loader airflow_settings.yaml), or create it in the UI")
