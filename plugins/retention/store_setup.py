"""The store's roles and grants: least privilege for the pipeline, read-only for analysts.

An admin runs ``python -m retention store-setup`` once (and again after an upgrade) with the store owner's
credential: it applies the store DDL and grants each role what it needs and nothing more. Tasks never run that
DDL; they connect as the pipeline role and only check, before touching anything, that the grants they rely on
hold (:func:`missing`).

- pipeline (login): creates and writes its own tables in ``cache`` and ``retention_staging``; appends to the
  ledger and reads it, never deletes a row nor changes a sealed one (no DELETE/TRUNCATE grant, and SQL 008's
  trigger); only reads Connect's ``salesforce`` schema, where a plain write would be pushed to Salesforce.
- analyst: reads ``cache`` and nothing else, including the cache tables the pipeline creates later.
- external: reads the External Object views in ``retention_external`` (made by the pipeline) and nothing else.

The pipeline must not own the ledger: an owner bypasses grants. The owner stays the admin's credential (on
Heroku Postgres the default credential, which Heroku Connect also uses and which has admin option on the
credentials made with ``heroku pg:credentials:create``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retention.steps.run import RetentionError

PIPELINE = "retention_pipeline"
ANALYST = "retention_analyst"
EXTERNAL = "retention_external"  # reads the External Object views (retention/external_views.py) and nothing else
MIRROR = "salesforce"
SETUP_COMMAND = "python -m retention store-setup"

# What each pipeline task relies on: (object, kind, privileges). Tables are checked only as far as the code
# touches them; DELETE on privacy_holds because the purge refreshes the store's copy of holds in full.
PIPELINE_NEEDS = (
    ("cache", "schema", "USAGE, CREATE"),
    ("retention_staging", "schema", "USAGE, CREATE"),
    ("retention_external", "schema", "USAGE, CREATE"),
    ("retention", "schema", "USAGE"),
    ("retention.runs", "table", "SELECT, INSERT, UPDATE"),
    ("retention.purged_records", "table", "SELECT, INSERT"),
    ("retention.privacy_holds", "table", "SELECT, INSERT, UPDATE, DELETE"),
    ("retention.holds_mirror", "table", "SELECT, INSERT, UPDATE"),
    ("retention.active_runs", "table", "SELECT, INSERT, UPDATE, DELETE"),
    ("retention.runs_id_seq", "sequence", "USAGE"),
    ("retention.hmac_sha256(bytea, bytea)", "function", "EXECUTE"),
)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _ident(name: str) -> str:
    """Role and schema names are spliced into DDL (GRANT takes no bind parameters): plain lower-case only."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain lower-case Postgres name: {name!r}")
    return name


@dataclass(frozen=True)
class Roles:
    """The roles store-setup grants to.

    :param pipeline: the role the tasks connect as (``AIRFLOW_CONN_RETENTION_STORE``).
    :param analyst: the read-only role of analysts.
    :param external: the role that reads the External Object views only.
    :param mirror: Heroku Connect's schema in the store.
    """

    pipeline: str = PIPELINE
    analyst: str = ANALYST
    external: str = EXTERNAL
    mirror: str = MIRROR

    def __post_init__(self) -> None:
        for name in (self.pipeline, self.analyst, self.external, self.mirror):
            _ident(name)


class SetupError(RetentionError):
    """The store cannot be set up as asked, or is not set up for the connecting role: a retry cannot fix it."""


def grants(roles: Roles, *, mirror_exists: bool = True) -> list[str]:
    """The GRANTs of least privilege, run by the store's owner after the DDL (idempotent)."""
    p, a, x, m = roles.pipeline, roles.analyst, roles.external, roles.mirror
    stmts = [
        f"GRANT USAGE, CREATE ON SCHEMA cache, retention_staging, retention_external TO {p}",
        f"GRANT USAGE ON SCHEMA retention TO {p}",
        f"REVOKE CREATE ON SCHEMA retention FROM {p}",
        # The ledger: append and read only. No DELETE or TRUNCATE; UPDATE only seals the row just inserted
        # (the trigger of SQL 008 refuses it on a sealed row).
        f"REVOKE ALL ON ALL TABLES IN SCHEMA retention FROM {p}",
        f"GRANT SELECT, INSERT, UPDATE ON retention.runs TO {p}",
        f"GRANT SELECT, INSERT ON retention.purged_records TO {p}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON retention.privacy_holds, retention.holds_mirror, "
        f"retention.active_runs TO {p}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA retention TO {p}",
        f"GRANT EXECUTE ON FUNCTION retention.hmac_sha256(bytea, bytea) TO {p}",
        # Tables of cache and staging made before the pipeline had a role of its own (by the owner) become the
        # pipeline's, which alters them (ADD COLUMN) as policies change.
        f"""DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('cache', 'retention_staging') AND c.relkind IN ('r', 'p')
               AND c.relowner <> '{p}'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %I.%I OWNER TO {p}', t.nspname, t.relname);
    END LOOP;
END $$""",
        # Analysts read the retained data, including the cache tables the pipeline creates from now on.
        f"GRANT USAGE ON SCHEMA cache TO {a}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA cache TO {a}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {p} IN SCHEMA cache GRANT SELECT ON TABLES TO {a}",
        f"REVOKE ALL ON SCHEMA retention, retention_staging, retention_external FROM {a}",
        # The External Object views: their role reads them, through the view owner's (the pipeline's) rights.
        f"GRANT USAGE ON SCHEMA retention_external TO {x}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA retention_external TO {x}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {p} IN SCHEMA retention_external GRANT SELECT ON TABLES TO {x}",
        f"REVOKE ALL ON SCHEMA cache, retention, retention_staging FROM {x}",
    ]
    if mirror_exists:
        # Read-only on Connect's mirror, including the tables Connect (the owner's credential) adds later.
        stmts += [
            f"GRANT USAGE ON SCHEMA {m} TO {p}",
            f"REVOKE CREATE ON SCHEMA {m} FROM {p}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {m} FROM {p}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {m} TO {p}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {m} GRANT SELECT ON TABLES TO {p}",
            f"REVOKE ALL ON SCHEMA {m} FROM {a}, {x}",
        ]
    return stmts


def ddl() -> list[str]:
    """The store DDL in order: the package's SQL files, then the keyed-hash function."""
    from retention import transforms
    from retention.hooks.store import LEDGER_SCHEMA, SQL_DIR

    paths = sorted((p for p in SQL_DIR.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [*(p.read_text(encoding="utf-8").strip() for p in paths),
            transforms.hmac_ddl(LEDGER_SCHEMA).as_string(None).strip() + ";"]


def script(roles: Roles) -> str:
    """Everything store-setup runs, as one SQL script for ``heroku pg:psql`` (roles made beforehand)."""
    return "\n\n".join(
        [f"-- as the store's owner (Heroku Postgres: the default credential), after\n"
         f"--   heroku pg:credentials:create --name {roles.pipeline}\n"
         f"--   heroku pg:credentials:create --name {roles.analyst}\n"
         f"--   heroku pg:credentials:create --name {roles.external}\n"
         f"GRANT {roles.pipeline} TO CURRENT_USER;  -- for ALTER DEFAULT PRIVILEGES FOR ROLE {roles.pipeline}",
         *ddl(), *(s + ";" for s in grants(roles))]) + "\n"


def apply(conn, roles: Roles) -> list[str]:
    """Create missing roles (where the connecting role may), apply the DDL and the grants, in one transaction.

    Returns what was done, one line each. Raises :class:`SetupError` when a role is missing and cannot be made."""
    done = []
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('retention.store_setup'))")
    me, may_create = conn.execute(
        "SELECT current_user, rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    for role, login in ((roles.pipeline, True), (roles.analyst, True), (roles.external, True)):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            continue
        if not may_create:
            raise SetupError(f"role {role} does not exist and {me} may not create roles: on Heroku Postgres create "
                             f"it with `heroku pg:credentials:create --name {role}`, then run {SETUP_COMMAND} again")
        conn.execute(f"CREATE ROLE {role} {'LOGIN' if login else 'NOLOGIN'} NOSUPERUSER NOCREATEDB NOCREATEROLE")
        done.append(f"created role {role}")
    if not conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (roles.pipeline,)).fetchone()[0]:
        # ALTER DEFAULT PRIVILEGES FOR ROLE needs membership; Heroku's default credential has admin option.
        conn.execute(f"GRANT {roles.pipeline} TO CURRENT_USER")
    for statement in ddl():
        conn.execute(statement)
    done.append("applied the store DDL (schemas cache, retention, retention_staging, retention_external; the ledger)")
    mirror = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (roles.mirror,)).fetchone() is not None
    for statement in grants(roles, mirror_exists=mirror):
        conn.execute(statement)
    done.append(f"granted {roles.pipeline}: write cache, retention_staging; append to the ledger; "
                + (f"read {roles.mirror}" if mirror else f"(schema {roles.mirror} not there yet: Heroku Connect "
                   f"creates it at its first sync; run {SETUP_COMMAND} again then)"))
    done.append(f"granted {roles.analyst}: read cache")
    done.append(f"granted {roles.external}: read the External Object views in retention_external")
    return done


@dataclass(frozen=True)
class Lack:
    """One object the connecting role cannot use as the pipeline needs: ``privileges`` empty when it is missing."""

    kind: str
    obj: str
    privileges: tuple[str, ...]

    def describe(self) -> str:
        if not self.privileges:
            return f"{self.kind} {self.obj} does not exist"
        return f"{' and '.join(self.privileges)} on {self.kind} {self.obj}"


def missing(conn, mirror: str = MIRROR) -> list[Lack]:
    """What the connecting role lacks of what the pipeline relies on (empty: ready); the mirror schema is checked
    only when it exists (a deployment reading Salesforce only through the Bulk API has none).

    One read-only query: every task that opens the store's schemas calls it first."""
    wanted = [(obj, kind, priv.strip()) for obj, kind, privs in PIPELINE_NEEDS for priv in privs.split(",")]
    wanted.append((mirror, "mirror", "USAGE"))
    # Objects inside a schema the role may not use are left to that schema's line: Postgres will not even look
    # them up (to_regclass raises for lack of USAGE).
    rows = conn.execute(
        """
        SELECT obj, kind, priv, CASE
                 WHEN kind IN ('schema', 'mirror') AND to_regnamespace(obj) IS NULL THEN
                   CASE kind WHEN 'schema' THEN 'absent' ELSE 'yes' END
                 WHEN kind IN ('schema', 'mirror') THEN
                   CASE WHEN has_schema_privilege(obj, priv) THEN 'yes' ELSE 'no' END
                 WHEN to_regnamespace(split_part(obj, '.', 1)) IS NULL
                      OR NOT has_schema_privilege(split_part(obj, '.', 1), 'USAGE') THEN 'unreachable'
                 WHEN kind = 'function' AND to_regprocedure(obj) IS NULL THEN 'absent'
                 WHEN kind = 'function' THEN CASE WHEN has_function_privilege(obj, priv) THEN 'yes' ELSE 'no' END
                 WHEN to_regclass(obj) IS NULL THEN 'absent'
                 WHEN kind = 'sequence' THEN CASE WHEN has_sequence_privilege(obj, priv) THEN 'yes' ELSE 'no' END
                 ELSE CASE WHEN has_table_privilege(obj, priv) THEN 'yes' ELSE 'no' END
               END
        FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS t(obj, kind, priv, n) ORDER BY n
        """, [list(column) for column in zip(*wanted, strict=True)]).fetchall()
    out: dict[tuple[str, str], list[str]] = {}
    for obj, kind, priv, state in rows:
        kind = "schema" if kind == "mirror" else kind
        if state == "absent":
            out[(kind, obj)] = []
        elif state == "no":
            out.setdefault((kind, obj), []).append(priv)
    return [Lack(kind, obj, tuple(privs)) for (kind, obj), privs in out.items()]


def require(conn, mirror: str = MIRROR) -> None:
    """Fail, naming each missing grant and the admin command, unless the pipeline's grants hold."""
    lacking = missing(conn, mirror)
    if lacking:
        role = conn.execute("SELECT current_user").fetchone()[0]
        raise SetupError(f"the retention store is not set up for role {role}: missing "
                         f"{'; '.join(lack.describe() for lack in lacking)}. "
                         f"Run `{SETUP_COMMAND}` once with the store owner's credential (see README, "
                         "'Roles of the store'); tasks never change grants themselves")
