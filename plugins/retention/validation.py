"""The gate before any destructive step: prove this run's retained copy is complete (invariant 1).

Great Expectations 1.x is called directly (the GX Airflow provider pins an old structlog). GX takes
5-14 s to import, so it is imported inside :func:`validate_retained` only; importing this module stays
cheap for DAG parsing. The count comparison itself is plain arithmetic as well, so a GX quirk can
never turn a count mismatch into a pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A run key as the pipeline builds it: f"{policy.id}__{anchor:%Y%m%dT%H%M%S}". The value ends up in
# a SQL string GX runs, so anything else is refused outright (it is also quoted as a literal).
RUN_VALUE_PATTERN = re.compile(r"[a-z0-9_]+__\d{8}T\d{6}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_KEY_COLUMN = "sfid"
_ROW_COUNT_PARAMETER = "expected_rows"
_URL_VARIABLE = "RETENTION_GX_STORE_URL"
# GX result formats: the verdict with its counts but no offending values (GX still asks for them, LIMIT 0, which
# Postgres answers without a scan), and with up to 20 of them.
_VERDICT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}
_DETAIL_FORMAT = {"result_format": "SUMMARY"}


@dataclass(frozen=True)
class RowCounts:
    """The counts each pipeline step saw; ``salesforce`` is the org's own count (None: not checked)."""

    eligible: int
    staged: int
    retained: int
    salesforce: int | None = None


@dataclass
class ValidationResult:
    """Outcome of the gate; ``details`` is JSON-safe so it can go to XCom and the ledger as is."""

    success: bool
    message: str
    details: dict = field(default_factory=dict)


def format_counts(counts: RowCounts, *, store: int | None = None) -> str:
    """One readable line of counts; a count that disagrees with ``eligible`` says what was expected.

    ``store`` is the row count GX observed in the store; shown only when it differs from ``retained``.
    """

    def part(name: str, value: int | None) -> str:
        if value is None:
            return f"{name} not checked"
        return f"{name} {value}" if value == counts.eligible else f"{name} {value} (expected {counts.eligible})"

    retained = part("retained", counts.retained)
    if store is not None and store != counts.retained:
        retained += f" (store has {store})"
    return ", ".join([f"eligible {counts.eligible}", part("staged", counts.staged), retained,
                      part("salesforce", counts.salesforce)])


def count_mismatches(counts: RowCounts) -> list[str]:
    """The arithmetic checks, outside GX: eligible == staged == retained (== salesforce when known)."""
    return [f"{name} {value} != eligible {counts.eligible}"
            for name, value in (("staged", counts.staged), ("retained", counts.retained),
                                ("salesforce", counts.salesforce))
            if value is not None and value != counts.eligible]


def run_query(*, schema: str, table: str, run_column: str, run_value: str) -> str:
    """The batch GX validates: this run's rows only, identifiers and the value quoted by psycopg.sql."""
    from psycopg import sql

    if not RUN_VALUE_PATTERN.fullmatch(run_value):
        raise ValueError(f"refusing run value {run_value!r}: expected a run key like "
                         "inactive_contacts__20250601T030000")
    for name in (schema, table, run_column):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"refusing SQL identifier {name!r}")
    query = sql.SQL("SELECT * FROM {} WHERE {} = {}").format(
        sql.Identifier(schema, table), sql.Identifier(run_column), sql.Literal(run_value))
    return query.as_string()


def gx_connection_string(store_url: str) -> str:
    """GX accepts only driver-qualified Postgres URLs; plain ``postgresql://``/``postgres://`` get psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if store_url.startswith(prefix):
            return "postgresql+psycopg2://" + store_url[len(prefix):]
    return store_url


def validate_retained(store_url: str, *, schema: str, table: str, run_column: str, run_value: str, counts: RowCounts,
                      policy_id: str, run_label: str, docs_dir: Path | None = None,
                      query: Any = None, batch_table: tuple[str, str] | None = None) -> ValidationResult:
    """Check the retained rows of one run with GX, plus the step counts; success only if everything agrees.

    GX checks the rows in the store (row count == eligible, sfid unique and not null); the step counts
    are compared in plain Python. With ``docs_dir`` a file context there gets a Checkpoint that writes
    Data Docs, and ``details["data_docs"]`` is the index.html path. ``query`` replaces the default batch
    (this run's rows by ``run_column``); ``batch_table`` (schema, name) is a table holding exactly the rows to
    check, validated whole as a GX table asset (GX reads a table's columns from the catalog, where a query batch
    is run in full and fetched to learn them). Connection errors propagate: no verdict is not a pass.
    """
    default_query = run_query(schema=schema, table=table, run_column=run_column, run_value=run_value)
    # A caller may narrow the batch further (a psycopg.sql query over the same rows, e.g. joined with the
    # run's staging table so that rows an earlier attempt of the run already settled are not counted).
    query = query.as_string() if hasattr(query, "as_string") else (query or default_query)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if batch_table is not None:
        for name in batch_table:
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"refusing SQL identifier {name!r}")
    gx_result, docs_index = _run_gx(gx_connection_string(store_url), batch_table or query, counts.eligible,
                                    policy_id, run_value, docs_dir)

    expectations = _trim_expectations(gx_result.get("expectations", []))
    by_type = {e["expectation_type"]: e for e in expectations}
    unique = by_type.get("expect_column_values_to_be_unique", {}).get("success")
    not_null = by_type.get("expect_column_values_to_not_be_null", {}).get("success")
    row_count = by_type.get("expect_table_row_count_to_equal", {})
    mismatches = count_mismatches(counts)
    # Each of the three checks must have run and passed: a suite that silently evaluated nothing is no proof.
    gx_ok = bool(gx_result.get("success")) and unique is True and not_null is True and row_count.get("success") is True
    success = gx_ok and not mismatches

    # GX's own row count is the store's truth; if it differs from the step-reported retained count, show both.
    observed = row_count.get("observed_value")
    message = (f"validation {'passed' if success else 'failed'} for policy {policy_id} run {run_label}: "
               f"{format_counts(counts, store=observed)}; sfid unique: {_yes_no(unique)}; "
               f"sfid not null: {_yes_no(not_null)}")
    details: dict[str, Any] = {
        "policy_id": policy_id,
        "run": run_label,
        "run_value": run_value,
        "table": f"{schema}.{table}",
        "counts": {"eligible": counts.eligible, "staged": counts.staged, "retained": counts.retained,
                   "salesforce": counts.salesforce, "store": observed},
        "count_mismatches": mismatches,
        "gx": {"success": gx_ok, "statistics": gx_result.get("statistics", {}),
               "expectations": expectations},
    }
    if docs_index is not None:
        details["data_docs"] = str(docs_index)
    return ValidationResult(success=success, message=message, details=details)


def _yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


def _trim_expectations(items: list[dict]) -> list[dict]:
    """Keep what an owner needs from ``describe_dict()``; drop unexpected-value lists that can be large."""
    keep = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
    trimmed = []
    for item in items:
        result = item.get("result") or {}
        trimmed.append({
            "expectation_type": item.get("expectation_type"),
            "success": bool(item.get("success")),
            "kwargs": {k: v for k, v in (item.get("kwargs") or {}).items() if k in ("column", "value")},
            **{k: result[k] for k in keep if k in result},
            **({"exception": str(item["exception_info"].get("exception_message"))}
               if (item.get("exception_info") or {}).get("raised_exception") else {}),
        })
    return trimmed


def _run_gx(connection_string: str, source: str | tuple[str, str], expected_rows: int, policy_id: str,
            run_value: str, docs_dir: Path | None) -> tuple[dict, Path | None]:
    """Run the suite on the batch (a query, or a (schema, table) validated whole); returns GX's
    ``describe_dict()`` and the Data Docs index, if any."""
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX pins one module's logger at INFO (a line per ephemeral context); quiet it, and the rest of GX
    # unless the deployment configured it explicitly.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    else:
        context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)

    name = f"retention__{policy_id}"
    # A file context writes its datasources to great_expectations.yml: hand GX an env-var reference,
    # never the URL itself, so the store password cannot land in the docs folder (invariant 5).
    previous_url = os.environ.get(_URL_VARIABLE)
    os.environ[_URL_VARIABLE] = connection_string
    datasource = batch = None
    try:
        datasource = context.data_sources.add_or_update_postgres(
            name=name, connection_string="${" + _URL_VARIABLE + "}")
        if isinstance(source, tuple):
            asset = datasource.add_table_asset(name="retained_run", schema_name=source[0], table_name=source[1])
        else:
            asset = datasource.add_query_asset(name="retained_run", query=source)
        batch = asset.add_batch_definition_whole_table(name="whole")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=[
            gx.expectations.ExpectTableRowCountToEqual(value={"$PARAMETER": _ROW_COUNT_PARAMETER}),
            gx.expectations.ExpectColumnValuesToBeUnique(column=_KEY_COLUMN),
            gx.expectations.ExpectColumnValuesToNotBeNull(column=_KEY_COLUMN),
        ]))
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        parameters = {_ROW_COUNT_PARAMETER: expected_rows}
        if docs_dir is None:
            def run(result_format: dict) -> dict:
                return definition.run(expectation_parameters=parameters, result_format=result_format).describe_dict()
        else:
            from great_expectations.checkpoint import UpdateDataDocsAction
            from great_expectations.core.run_identifier import RunIdentifier

            checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
                name=name, validation_definitions=[definition], actions=[UpdateDataDocsAction(name="data_docs")]))

            def run(result_format: dict) -> dict:
                checkpoint.result_format = result_format
                checkpoint.save()
                # Named by run key so the docs site lists each retention run, not "__none__".
                done = checkpoint.run(expectation_parameters=parameters, run_id=RunIdentifier(run_name=run_value))
                return next(iter(done.run_results.values())).describe_dict()

        # The verdict first, which needs one pass per check. Only a failure is worth GX's further passes that list
        # the offending values (for the owner, in the Data Docs): on a million rows they cost as much again as the
        # verdict.
        described = run(_VERDICT_FORMAT)
        if not described.get("success"):
            described = run(_DETAIL_FORMAT)
        return described, _docs_index(context, docs_dir) if docs_dir is not None else None
    finally:
        _dispose(datasource, batch.data_asset.datasource if batch is not None else None,
                 *context.data_sources.all().values())
        if previous_url is None:
            os.environ.pop(_URL_VARIABLE, None)
        else:
            os.environ[_URL_VARIABLE] = previous_url


def _docs_index(context: Any, docs_dir: Path) -> Path | None:
    """The local Data Docs site's index.html (GX reports file:// URLs)."""
    from urllib.parse import unquote, urlparse

    for site in context.get_docs_sites_urls():
        url = site.get("site_url") or ""
        if url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.exists():
                return path
    found = sorted(docs_dir.rglob("data_docs/local_site/index.html"))
    return found[0] if found else None


def _dispose(*datasources: Any) -> None:
    """Close GX's SQLAlchemy pools: GX never disposes Postgres engines, so each run would leave idle
    connections on the store. A context may hold several copies of the datasource, each with engines."""
    seen: set[int] = set()
    for datasource in datasources:
        for engine in (getattr(datasource, "_engine", None),
                       getattr(getattr(datasource, "_execution_engine", None), "engine", None)):
            if engine is None or id(engine) in seen:
                continue
            seen.add(id(engine))
            try:
                engine.dispose()
            except Exception:  # noqa: BLE001 - best-effort cleanup must never mask the verdict
                pass
