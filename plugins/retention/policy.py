"""Retention policies: the YAML contract (DESIGN.md, "The policy file"), its model and its loader.

A policy decides which Salesforce records are deleted or masked, so it is validated strictly when
the DAG file is parsed: unknown keys are errors (a typo must not silently fall back to a default),
the ``where`` filter is parsed (never pasted into a query), and every problem is reported as
``<file>: <key.path>: <reason>`` so the Airflow import error points at the line to fix. Checks
that need the org (do the fields exist, can they be masked) run against describe at run time:
``check_against_describe``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from retention import masking, soql_filter, transforms

# Airflow's [retention] policies_dir (AIRFLOW__RETENTION__POLICIES_DIR); see retention.config.
POLICIES_DIR_OPTION = "policies_dir"
DAG_ID_PREFIX = "retention__"

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_POLICY_ID = re.compile(r"^[a-z0-9_]+$")
_TABLE = re.compile(r"^[a-z][a-z0-9_]*$")
# Airflow's presets that make sense for a retention sweep; @continuous would loop deletions back to back.
SCHEDULE_PRESETS = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")


class PolicyError(ValueError):
    """Everything wrong with one policy file, one ``<file>: <key>: <reason>`` line per problem."""

    def __init__(self, path: Path | str | None, problems: list[tuple[str | None, str]]):
        self.path = Path(path) if path is not None else None
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        where = _display(self.path) if self.path is not None else "<policy>"
        return [f"{where}: {key}: {reason}" if key else f"{where}: {reason}" for key, reason in self.problems]


def project_dir() -> Path:
    """The Airflow project (dags/, include/, plugins/): the folder holding Airflow's dags folder, as in an Astro
    project. Not the package's own location, which in a deployment is an installed wheel in site-packages."""
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")).resolve().parent


def _display(path: Path) -> str:
    """Paths inside the Airflow project read as in a pull request (include/policies/x.yaml)."""
    try:
        return str(path.resolve().relative_to(project_dir()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ small validators


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a Salesforce API name (letters, digits and _, starting with a letter)")
    return value


def _not_id(value: str) -> str:
    if value.lower() == "id":
        raise ValueError("Id is always kept (as sfid) and never masked; remove it")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


ApiName = Annotated[str, AfterValidator(_identifier)]
FieldName = Annotated[str, AfterValidator(_identifier), AfterValidator(_not_id)]
Text = Annotated[str, AfterValidator(_non_blank)]


def _case_duplicates(names: Mapping[str, Any]) -> str | None:
    """Salesforce (and the mirror's lower-cased columns) treat Email and email as one field."""
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            return f"{seen[name.lower()]} and {name} name the same field"
        seen[name.lower()] = name
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------ transforms

# Written as in a policy file: "truncate:N" for the kinds that take a length.
_EXPECTED_TRANSFORMS = ", ".join(f"{k.name}:N" if k.sized else k.name for k in transforms.KINDS.values())
_TransformKind = Literal[tuple(transforms.KINDS)]


class Transform(_Model):
    """What is retained of a field (a kind of retention.transforms). Written ``keep`` or ``truncate:40``
    (canonical), or ``{transform: truncate, length: 40}``; ``null`` (YAML's null too) retains the column empty."""

    kind: _TransformKind
    n: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if data is None:
            return {"kind": "null"}
        if isinstance(data, str):
            name, sep, size = data.strip().partition(":")
            if name not in transforms.KINDS:
                raise ValueError(f"unknown transform {data!r} (expected {_EXPECTED_TRANSFORMS})")
            sized = transforms.KINDS[name].sized
            if sized and not sep:
                raise ValueError(f"{name} needs a length: {name}:N, e.g. {name}:40")
            if sep and not sized:
                raise ValueError(f"{name} takes no length (expected {_EXPECTED_TRANSFORMS})")
            if sep and not size.strip().isdigit():
                raise ValueError(f"{name}:N needs a whole number N >= 1, got {size.strip()!r}")
            return {"kind": name, "n": int(size) if sep else None}
        if isinstance(data, dict) and "kind" not in data:
            unknown = set(data) - {"transform", "length"}
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (expected transform, length)")
            if "transform" not in data:
                raise ValueError(f"long form needs 'transform' (one of {_EXPECTED_TRANSFORMS})")
            name = data["transform"]
            if not isinstance(name, str) or name not in transforms.KINDS:
                raise ValueError(f"unknown transform {name!r} (expected {_EXPECTED_TRANSFORMS})")
            sized = transforms.KINDS[name].sized
            if sized and "length" not in data:
                raise ValueError(f"{name} needs a length: {{transform: {name}, length: N}}")
            if not sized and "length" in data:
                raise ValueError(f"{name} takes no length")
            length = data.get("length")
            if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
                raise ValueError(f"{name} length must be a whole number >= 1, got {length!r}")
            return {"kind": name, "n": data.get("length")}
        if isinstance(data, dict):
            return data
        raise ValueError(f"expected a transform name ({_EXPECTED_TRANSFORMS}), got {type(data).__name__} {data!r}")

    @model_validator(mode="after")
    def _size(self) -> Transform:
        if self.spec.sized and (self.n is None or self.n < 1):
            raise ValueError(f"{self.kind}:N needs N >= 1")
        return self

    @property
    def spec(self) -> transforms.Kind:
        """The transform's registry entry (its SQL, field types, ...)."""
        return transforms.KINDS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}:{self.n}" if self.spec.sized else self.kind


# ------------------------------------------------------------------------------------- mask strategies

# Every option some strategy takes: one that another strategy takes reads as misplaced, not as a typo.
_ALL_OPTIONS = frozenset(name for entry in masking.STRATEGIES.values() for name in entry.options.names())


def _strategy_form(data: Any) -> Any:
    """``nullify`` is short for ``{strategy: nullify}``. Names and options are checked here against
    retention.masking's registry so that a mistake reads in the policy's words, not as a union error."""
    if isinstance(data, str):
        data = {"strategy": data}
    if not isinstance(data, dict):
        raise ValueError(f"expected a strategy name or {{strategy: ..., options}}, got {type(data).__name__}")
    name = data.get("strategy")
    names = ", ".join(masking.STRATEGIES)
    if name is None:
        raise ValueError(f"needs 'strategy' (one of {names})")
    if not isinstance(name, str) or name not in masking.STRATEGIES:
        raise ValueError(f"unknown mask strategy {name!r} (expected {names})")
    options = masking.STRATEGIES[name].options
    takes = options.names()
    for key in data:
        if key in _ALL_OPTIONS and key not in takes:
            raise ValueError(f"option {key!r} does not apply to {name} ({name} takes {', '.join(takes)})")
    required = {key: field for key, field in options.model_fields.items() if field.is_required()}
    if missing := [key for key in required if data.get(key) is None]:
        example = ", ".join(f"{key}: {field.examples[0]}" for key, field in required.items())
        raise ValueError(f"{name} needs {' and '.join(missing)}: {{strategy: {name}, {example}}}")
    return data


# How a field is overwritten in Salesforce: one of retention.masking's strategies with its options, written
# ``nullify`` or ``{strategy: ..., <options>}``. Each value is that strategy's options model (``.strategy``,
# ``.options``).
MaskStrategy = Annotated[
    Union[tuple(entry.options for entry in masking.STRATEGIES.values())],  # noqa: UP007 (no X | Y spelling for a list)
    Field(discriminator="strategy"),
    BeforeValidator(_strategy_form),
]


# --------------------------------------------------------------------------------------------- policy


class Select(_Model):
    date_field: ApiName
    older_than_days: int = Field(ge=1)
    where: str | None = None
    exclude_privacy_holds: bool = True

    @field_validator("where")
    @classmethod
    def _parse_where(cls, value: str | None) -> str | None:
        if value is not None:
            soql_filter.parse(value)  # FilterError is a ValueError: reported at select.where
        return value

    @cached_property
    def filter(self) -> soql_filter.Expr | None:
        """The parsed ``where`` filter; render it with soql_filter.to_soql / to_sql, never paste the text."""
        return soql_filter.parse(self.where) if self.where is not None else None


class Retain(_Model):
    table: str
    fields: dict[FieldName, Transform]
    # How long the retained copy is kept; the store purge DAG deletes older cache rows (never held ones).
    # Unset: kept until removed by hand.
    keep_days: int | None = Field(default=None, ge=1)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _TABLE.match(value):
            raise ValueError(f"{value!r} is not a table name (lower-case letters, digits and _, from a letter)")
        if len(value) > 63:
            raise ValueError(f"table name is {len(value)} characters; Postgres allows 63")
        return value

    # Retained fields stored encrypted (retention.encryption), read back with `python -m retention decrypt`.
    encrypt: list[FieldName] = []

    @field_validator("fields")
    @classmethod
    def _unique(cls, value: dict[str, Transform]) -> dict[str, Transform]:
        if problem := _case_duplicates(value):
            raise ValueError(problem)
        return value

    @field_validator("encrypt")
    @classmethod
    def _encrypt(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Only retained fields, each once, spelled as in ``fields``. ``null`` keeps nothing to encrypt, and a
        ``hash`` is already unreadable and kept only to be matched, which a randomised ciphertext would prevent."""
        fields = info.data.get("fields")
        if fields is None:  # fields itself is wrong; that error says enough
            return value
        by_lower = {name.lower(): name for name in fields}
        out: list[str] = []
        for name in value:
            field = by_lower.get(name.lower())
            if field is None:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f"did you mean {close[0]}?" if close else f"retained: {', '.join(fields)}"
                raise ValueError(f"'{name}' is not a retained field ({hint}); only what retain.fields keeps can be "
                                 "encrypted")
            if field in out:
                raise ValueError(f"'{field}' is listed twice")
            kind = fields[field].kind
            if kind == "null":
                raise ValueError(f"'{field}' is retained as null: there is nothing to encrypt")
            if kind == "hash":
                raise ValueError(f"'{field}' is retained as a keyed hash, already unreadable and kept to be matched; "
                                 "encrypting it would make it unmatchable")
            out.append(field)
        return out


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Alerts(_Model):
    """Who hears about a failed run: e-mail through Airflow's SMTP connection, and/or a Slack webhook."""

    email: list[str] = []
    slack_webhook_conn_id: str | None = None
    smtp_conn_id: str = "smtp_default"
    # Not "on": YAML reads a bare `on` key as the boolean true.
    when: list[Literal["validation_failed", "task_failed"]] = ["validation_failed", "task_failed"]

    @field_validator("email")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _EMAIL.match(v)]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(bad)}")
        return value


FREQUENCIES = ("once", "daily", "weekly", "monthly", "yearly")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month ever has
_FREQUENCY_KEYS = ("frequency", "at", "weekday", "month", "day")
_HH_MM = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


def _only_for(frequencies: tuple[str, ...], value: Any, info: ValidationInfo, missing: str) -> Any:
    """A key that belongs to some frequencies: refused with another (None when absent), required with its
    own (``missing``, formatted with ``kind``, says what to add)."""
    kind = info.data.get("frequency")
    if kind not in frequencies:
        if value is not None and kind is not None:
            raise ValueError(f"only for frequency: {' or '.join(frequencies)} (frequency is {kind})")
        return None
    if value is None:
        raise ValueError(missing.format(kind=kind))
    return value


class Frequency(_Model):
    """Privacy Center's schedule frequencies, times in UTC (retention.timetables turns them into timetables).

    ``{frequency: once, at: 2026-03-01T02:00:00Z}``, ``{frequency: daily, at: "03:00"}``, ``weekly`` with
    ``weekday``, ``monthly`` with ``day`` (a day the month lacks falls back to its last day), ``yearly``
    with ``month`` and ``day`` (29 February falls back to the 28th in other years).
    """

    frequency: Literal["once", "daily", "weekly", "monthly", "yearly"]
    at: datetime | time | None = Field(None, validate_default=True)
    weekday: str | None = Field(None, validate_default=True)
    month: int | None = Field(None, validate_default=True)
    day: int | None = Field(None, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(k) for k in data if k not in _FREQUENCY_KEYS]
            if unknown:
                close = difflib.get_close_matches(unknown[0], _FREQUENCY_KEYS, n=1)
                hint = f"did you mean {close[0]}?" if close else f"expected {', '.join(_FREQUENCY_KEYS)}"
                raise ValueError(f"unknown key(s) {', '.join(unknown)} ({hint})")
        return data

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("frequency")
        if kind is None:  # frequency itself is wrong; that error says enough
            return None
        if kind == "once":
            example = "at: 2026-03-01T02:00:00Z"
            if value is None:
                raise ValueError(f"once needs the date and time of the run: {example}")
            if isinstance(value, str):
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    raise ValueError(f"{value!r} is not a date and time: {example}") from None
            if not isinstance(value, datetime):
                raise ValueError(f"once needs a date and time, got {value!r}: {example}")
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        example = 'at: "03:00"'
        if value is None:
            raise ValueError(f"{kind} needs the time of the run, HH:MM in UTC: {example}")
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 13:00 as 780 (base 60)
            raise ValueError(f"quote the time ({example}): unquoted, YAML reads {value // 60}:{value % 60:02} "
                             f"as the number {value}")
        match = _HH_MM.match(value) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"{value!r} is not a time of day; expected HH:MM (00:00-23:59, UTC): {example}")
        return time(int(match[1]), int(match[2]))

    @field_validator("weekday", mode="before")
    @classmethod
    def _weekday(cls, value: Any, info: ValidationInfo) -> Any:
        value = _only_for(("weekly",), value, info, f"weekly needs a weekday ({', '.join(_WEEKDAYS)})")
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in _WEEKDAYS:
            raise ValueError(f"{value!r} is not a weekday (expected {', '.join(_WEEKDAYS)})")
        return value.strip().lower()

    @field_validator("month", mode="before")
    @classmethod
    def _month(cls, value: Any, info: ValidationInfo) -> Any:
        value = _only_for(("yearly",), value, info, "yearly needs a month (1-12 or its name) and a day")
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in _MONTHS:
            return _MONTHS.index(value.strip().lower()) + 1
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
            raise ValueError(f"{value!r} is not a month (1-12, or january ... december)")
        return value

    @field_validator("day", mode="before")
    @classmethod
    def _day(cls, value: Any, info: ValidationInfo) -> Any:
        value = _only_for(("monthly", "yearly"), value, info, "{kind} needs a day of the month (1-31)")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 31:
            raise ValueError(f"{value!r} is not a day of the month (1-31)")
        month = info.data.get("month")
        if info.data.get("frequency") == "yearly" and month is not None and value > _MONTH_DAYS[month - 1]:
            raise ValueError(f"{_MONTHS[month - 1].capitalize()} has no day {value} "
                             f"(at most {_MONTH_DAYS[month - 1]})")
        return value


class Guards(_Model):
    """Limits a run checks before it touches anything.

    :param max_records_per_run: more eligible records than this fail the run.
    :param max_api_share: the largest share (0-1] of the org's remaining daily API requests, Bulk batches and Bulk
        query jobs (``/limits``) the run may spend; None: ``[retention] max_api_share``.
    :param chunk_records: records per ``delete_or_mask`` and ``verify_in_salesforce`` task instance (dynamic task
        mapping): chunks run in parallel on as many workers as the ``salesforce_api`` pool lets in.
    """

    max_records_per_run: int = Field(50_000, ge=1)
    max_api_share: float | None = Field(None, gt=0, le=1)
    chunk_records: int = Field(250_000, ge=1)


class CascadeChild(_Model):
    """Records of a child object that Salesforce deletes with their parent (a cascade delete): they are
    retained in their own cache table, counted and validated like the parent's, before any parent goes.

    :param object: the child sObject, e.g. Contact.
    :param relationship: the child's lookup field to the parent, e.g. AccountId.
    :param retain: what is kept of each child (as the policy's own ``retain``).
    """

    object: ApiName
    relationship: FieldName
    retain: Retain


# What a privacy hold needs read: the held record, whether the hold is on, and until when.
HOLD_FIELDS = ("ReferenceRecordId", "IsActive", "EndDate")


class Policy(_Model):
    """One retention policy file. Build with ``load_policy``; ``path`` and ``source_hash`` identify the file."""

    id: str
    description: Text
    owner: Text
    object: ApiName
    schedule: str | Frequency | None  # required key; null means manual runs only
    start_date: date
    catchup: bool = False
    select: Select
    retain: Retain
    action: Literal["delete", "hard_delete", "mask"]
    mask: dict[FieldName, MaskStrategy] | None = Field(None, validate_default=True)
    guards: Guards = Guards()
    alerts: Alerts | None = None
    source: Literal["heroku_connect", "salesforce_api"] = "heroku_connect"
    cascade: list[CascadeChild] = Field(default_factory=list, validate_default=True)
    # Cascading relationships (describe's relationshipName, e.g. ActivityHistories) whose children may go with a
    # deleted parent unretained: a reviewed exception, for read-only views and bookkeeping a team does not keep.
    cascade_exempt: list[ApiName] = []

    _path: Path | None = PrivateAttr(None)
    _source_hash: str | None = PrivateAttr(None)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _POLICY_ID.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits and underscores ([a-z0-9_]+)")
        return value

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_form(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a frequency: its errors are reported at schedule.<key>
            return Frequency.model_validate(value)
        if value is not None and not isinstance(value, str | Frequency):
            raise ValueError(f"expected a cron string, a preset ({', '.join(SCHEDULE_PRESETS)}), "
                             f"{{frequency: ...}} or null, got {type(value).__name__} {value!r}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | Frequency | None) -> str | Frequency | None:
        if value is None or isinstance(value, Frequency) or value in SCHEDULE_PRESETS:
            return value
        if value.startswith("@"):
            raise ValueError(f"unknown preset {value!r} (expected {', '.join(SCHEDULE_PRESETS)}, a cron or null)")
        if len(value.split()) != 5 or not _valid_cron(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("mask")
    @classmethod
    def _mask(cls, value: dict[str, MaskStrategy] | None, info: ValidationInfo) -> dict[str, MaskStrategy] | None:
        action = info.data.get("action")
        if action is None:  # action itself is wrong; that error says enough
            return value
        if action == "mask" and value is None:
            raise ValueError("action: mask needs a mask mapping (field: strategy)")
        if action == "mask" and not value:
            raise ValueError("must name at least one field to mask")
        if action != "mask" and value is not None:
            raise ValueError(f"only allowed with action: mask (action is {action})")
        if value and (problem := _case_duplicates(value)):
            raise ValueError(problem)
        return value

    @field_validator("cascade")
    @classmethod
    def _cascade(cls, value: list[CascadeChild], info: ValidationInfo) -> list[CascadeChild]:
        action = info.data.get("action")
        if value and action == "mask":
            raise ValueError("only for action: delete or hard_delete (masking a parent takes no child with it)")
        seen: dict[str, str] = {}
        parent_table = info.data["retain"].table if info.data.get("retain") else None
        for n, child in enumerate(value):
            key = f"{child.object.lower()}.{child.relationship.lower()}"
            if key in seen:
                raise ValueError(f"{child.object}.{child.relationship} is listed twice (also cascade[{seen[key]}])")
            seen[key] = str(n)
            if child.retain.table == parent_table:
                raise ValueError(f"cascade[{n}].retain.table {child.retain.table!r} is the parent's table; "
                                 "each object needs its own")
        tables = [c.retain.table for c in value]
        dupes = sorted({t for t in tables if tables.count(t) > 1})
        if dupes:
            raise ValueError(f"cache table {dupes[0]!r} is used by more than one cascade child; each needs its own")
        return value

    @property
    def dag_id(self) -> str:
        return DAG_ID_PREFIX + self.id

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def source_hash(self) -> str:
        """sha256 of the file's bytes: the ledger records exactly which version of the policy acted."""
        if self._source_hash is None:  # built in code, not from a file
            return hashlib.sha256(self.model_dump_json().encode()).hexdigest()
        return self._source_hash

    def referenced_fields(self) -> set[str]:
        """Every field of the policy's object it reads or writes, as written (checked against describe at run time)."""
        names = {self.select.date_field, *self.retain.fields, *(self.mask or {})}
        if self.select.filter is not None:
            names |= soql_filter.fields(self.select.filter)
        return names

    def related_fields(self) -> dict[str, set[str]]:
        """Fields of other objects the policy reads: privacy holds, its filter's sub-selects, its cascade children
        ({object: {fields}}). Each object must be readable, and mapped in Heroku Connect for the mirror source."""
        out: dict[str, set[str]] = {}
        if self.select.exclude_privacy_holds:
            out["PrivacyHold"] = set(HOLD_FIELDS)
        if self.select.filter is not None:
            for name, names in soql_filter.other_objects(self.select.filter).items():
                out.setdefault(name, set()).update(names)
        for child in self.cascade:
            out.setdefault(child.object, set()).update({child.relationship, *child.retain.fields})
        return out


def _valid_cron(value: str) -> bool:
    from croniter import croniter

    return bool(croniter.is_valid(value))


# --------------------------------------------------------------------------------- describe checks

_DATE_TYPES = frozenset({"date", "datetime"})


def check_against_describe(policy: Policy, describe: Mapping[str, Any],
                           others: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[str]:
    """Problems between a policy and the object's Salesforce describe, one readable line each.

    ``others`` holds the describe of every object in ``policy.related_fields()`` (None: the API user cannot see
    it). Pure (no I/O): the run fetches the describes and refuses to start while this list is not empty.
    """
    others = {k.lower(): v for k, v in (others or {}).items()}
    by_lower = {f["name"].lower(): f for f in describe.get("fields", [])}
    sobject = describe.get("name") or policy.object
    problems: list[str] = []

    if describe.get("name") and describe["name"].lower() != policy.object.lower():
        problems.append(f"object: describe is for {describe['name']}, the policy is for {policy.object}")

    def lookup(key: str, name: str) -> dict | None:
        info = by_lower.get(name.lower())
        if info is None:
            problems.append(f"{key}: unknown field '{name}' on {sobject}")
        return info

    if info := lookup("select.date_field", policy.select.date_field):
        if info.get("type") not in _DATE_TYPES:
            problems.append(f"select.date_field: '{info['name']}' is {info.get('type')}, not a date or datetime")

    if policy.select.filter is not None:
        problems += [f"select.where: {p}" for p in soql_filter.check_types(
            policy.select.filter, describe, lambda name: others.get(name.lower()))]
    problems += _check_holds(policy, sobject, others)
    problems += _check_cascade(policy, describe, others)
    cascading = {(r.get("relationshipName") or "").lower() for r in describe.get("childRelationships", [])
                 if r.get("cascadeDelete")}
    for name in policy.cascade_exempt:
        if name.lower() not in cascading:
            problems.append(f"cascade_exempt: {sobject} has no cascading child relationship named {name}")

    for name, transform in policy.retain.fields.items():
        key = f"retain.fields.{name}"
        if (info := lookup(key, name)) and (problem := _transform_problem(transform, info)):
            problems.append(f"{key}: {problem}")

    if policy.action in ("delete", "hard_delete") and describe.get("deletable") is False:
        problems.append(f"action: {sobject} records are not deletable")
    for name, strategy in (policy.mask or {}).items():
        key = f"mask.{name}"
        if not (info := lookup(key, name)):
            continue
        if not info.get("updateable", False) or info.get("calculated"):
            problems.append(f"{key}: '{info['name']}' is not updateable, so it cannot be masked")
            continue
        if masking.STRATEGIES[strategy.strategy].nulls and info.get("nillable") is False:
            problems.append(f"{key}: {strategy.strategy} needs a nillable field; '{info['name']}' is required")
            continue
        # The masking module owns which strategy can produce a value each field type accepts.
        found = masking.validate_field_type(
            strategy.strategy, info.get("type", ""), strategy.options, field_length=info.get("length") or None
        )
        problems += [f"{key}: {problem}" for problem in found]
    return problems


def _check_holds(policy: Policy, sobject: str, others: Mapping[str, Any]) -> list[str]:
    if not policy.select.exclude_privacy_holds:
        return []
    holds = others.get("privacyhold")
    if holds is None:
        return ["select.exclude_privacy_holds: PrivacyHold is not available to the API user: it needs the Privacy "
                "Center license and the \"Manage Privacy Hold\" permission (and API version 59.0 or later). Grant "
                "them, or set exclude_privacy_holds: false to act without checking privacy holds"]
    target = {f["name"].lower(): f for f in holds.get("fields", [])}.get("referencerecordid")
    if target is None:
        return ["select.exclude_privacy_holds: PrivacyHold has no ReferenceRecordId field for this user"]
    refers_to = target.get("referenceTo") or []
    # Cascade children of a kind no hold can name (an Opportunity) are protected through their parent only.
    if policy.object.lower() not in {r.lower() for r in refers_to}:
        return [f"select.exclude_privacy_holds: a PrivacyHold cannot refer to {policy.object} records "
                f"(ReferenceRecordId refers to {', '.join(refers_to)}); set exclude_privacy_holds: false"]
    return []


def _check_cascade(policy: Policy, describe: Mapping[str, Any], others: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    relations = {(r.get("childSObject", "").lower(), (r.get("field") or "").lower()): r
                 for r in describe.get("childRelationships", [])}
    for n, child in enumerate(policy.cascade):
        key = f"cascade[{n}]"
        rel = relations.get((child.object.lower(), child.relationship.lower()))
        if rel is None or not rel.get("cascadeDelete"):
            problems.append(f"{key}: deleting {policy.object} does not delete {child.object} records through "
                            f"{child.relationship} (describe childRelationships); list only children a delete "
                            "takes with it")
            continue
        info = others.get(child.object.lower())
        if info is None:
            problems.append(f"{key}.object: {child.object} is not an object the API user can read")
            continue
        fields = {f["name"].lower(): f for f in info.get("fields", [])}
        for name, transform in child.retain.fields.items():
            field_info = fields.get(name.lower())
            if field_info is None:
                problems.append(f"{key}.retain.fields.{name}: unknown field '{name}' on {child.object}")
            elif problem := _transform_problem(transform, field_info):
                problems.append(f"{key}.retain.fields.{name}: {problem}")
    return problems


def _transform_problem(transform: Transform, info: Mapping[str, Any]) -> str | None:
    """Whether the transform applies to the field's describe type (retention.transforms says which it needs)."""
    spec = transform.spec
    if spec.field_types is None or info.get("type") in spec.field_types:
        return None
    return f"{transform} needs {spec.needs}; '{info['name']}' is {info.get('type')}"


# ------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def default_policies_dir() -> Path:
    """``[retention] policies_dir``, else the project's ``include/policies`` beside Airflow's dags folder."""
    from retention import config

    return Path(config.get(POLICIES_DIR_OPTION) or project_dir() / "include" / "policies")


def load_policy(path: Path | str) -> Policy:
    """Read and validate one policy file; raises PolicyError listing every problem found."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(path, [(None, f"cannot read file: {exc.strerror or exc}")]) from None
    return parse_policy(data, path)


def parse_policy(data: bytes, path: Path | str | None = None) -> Policy:
    """Validate policy YAML given as bytes; ``path`` is used in messages and kept on the Policy."""
    path = Path(path) if path is not None else None
    try:
        doc = yaml.load(data, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise PolicyError(path, [(where, f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(path, [(None, f"YAML error: {exc}")]) from None
    if doc is None:
        raise PolicyError(path, [(None, "file is empty; expected a policy (id, description, owner, object, ...)")])
    if not isinstance(doc, dict):
        raise PolicyError(path, [(None, f"top level must be a mapping of policy keys, got {type(doc).__name__}")])
    if nul := _nul_bytes(doc):
        raise PolicyError(path, nul)
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(path, _problems(exc)) from None
    policy._path = path
    policy._source_hash = hashlib.sha256(data).hexdigest()
    return policy


_NUL = "\x00"


def _nul_bytes(node: Any, loc: tuple = ()) -> list[tuple[str | None, str]]:
    """Keys and values holding a NUL (YAML's "\\0"): Postgres text cannot store one, so a ``where`` literal or a mask
    value with it would fail half-way through a run, or be cut short by some client. Refused here, never stripped."""
    key = ".".join(map(str, loc)) or None
    if isinstance(node, str):
        if (at := node.find(_NUL)) < 0:
            return []
        return [(key, f"contains a NUL character (character {at + 1}); Postgres text cannot hold one and it is "
                      "never stripped silently: remove it")]
    if isinstance(node, dict):
        found = [(key, f"key {k!r} contains a NUL character; remove it")
                 for k in node if isinstance(k, str) and _NUL in k]
        return found + [p for k, v in node.items() for p in _nul_bytes(v, (*loc, k))]
    if isinstance(node, list):
        return [p for n, v in enumerate(node) for p in _nul_bytes(v, (*loc, n))]
    return []


def load_policies(folder: Path | str | None = None) -> tuple[list[Policy], dict[Path, PolicyError]]:
    """All policies in a folder (``*.yaml``, ``*.yml``, sorted; not recursive), and the error of each bad file.

    A bad file never stops the others. Two files with the same id are both refused: which one the
    DAG should follow is a decision for a reviewer, not for file name order. So are two policies that retain
    into the same cache table: a table's rows are keyed by record id, so the second policy would take the
    first one's records for its own (already done, never acted on) and their columns would mix.
    """
    folder = Path(folder) if folder is not None else default_policies_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"policies folder {folder} does not exist (set AIRFLOW__RETENTION__POLICIES_DIR)")
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith(".")
    )
    policies: list[Policy] = []
    errors: dict[Path, PolicyError] = {}
    for path in files:
        try:
            policies.append(load_policy(path))
        except PolicyError as exc:
            errors[path] = exc
    by_id: dict[str, list[Policy]] = {}
    for policy in policies:
        by_id.setdefault(policy.id, []).append(policy)
    for policy_id, same in by_id.items():
        if len(same) < 2:
            continue
        for policy in same:
            others = ", ".join(_display(p.path) for p in same if p is not policy)
            errors[policy.path] = PolicyError(
                policy.path, [("id", f"duplicate id '{policy_id}', also used by {others}; ids must be unique")]
            )
    policies = [p for p in policies if len(by_id[p.id]) == 1]
    by_table: dict[str, list[tuple[Policy, str]]] = {}
    for policy in policies:
        for key, table in _cache_tables(policy):
            by_table.setdefault(table, []).append((policy, key))
    shared: dict[Path, list[tuple[str | None, str]]] = {}
    for table, users in by_table.items():
        for policy, key in users:
            others = [other for other, _ in users if other is not policy]
            if others:
                names = ", ".join(f"policy {o.id} ({_display(o.path)})" for o in others)
                shared.setdefault(policy.path, []).append(
                    (key, f"cache table '{table}' is also retained into by {names}; each policy needs its own table "
                          "(records are keyed by id, so two policies would take each other's records for their own)"))
    for path, problems in shared.items():
        errors[path] = PolicyError(path, problems)
    policies = [p for p in policies if p.path not in shared]
    return policies, dict(sorted(errors.items()))


def _cache_tables(policy: Policy) -> list[tuple[str, str]]:
    """(key, table) of every cache table the policy writes: its own and each cascade child's."""
    return [("retain.table", policy.retain.table),
            *((f"cascade.{n}.retain.table", child.retain.table) for n, child in enumerate(policy.cascade))]


# ------------------------------------------------------------------------------------ error messages


def _problems(exc: ValidationError) -> list[tuple[str | None, str]]:
    """pydantic's errors as (dotted key path, reason), in the words of the policy file."""
    out = []
    for err in exc.errors(include_url=False):
        loc, holder = _in_file(tuple(part for part in err["loc"] if part != "[key]"))
        key = ".".join(str(part) for part in loc) or None
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            allowed = list(holder.model_fields) if _is_model(holder) else []
            hint = ""
            if allowed:
                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (allowed: {', '.join(allowed)})"
            reason = f"unknown key{hint}"
        elif kind == "missing":
            reason = "required key is missing"
        elif kind in ("value_error", "assertion_error"):
            reason = str(err.get("ctx", {}).get("error", msg.removeprefix("Value error, ")))
        else:
            reason = msg[:1].lower() + msg[1:]
            value = err.get("input")
            if value is None or isinstance(value, str | int | float | bool | date):
                reason += f", got {value!r}"
        out.append((key, reason))
    return out


def _in_file(loc: tuple) -> tuple[tuple, Any]:
    """An error's location as the file spells it, and the model that holds its last key (for "did you mean").

    pydantic puts a tagged union's tag (a mask strategy's name) in the location; the file has no such key."""
    model: Any = Policy
    holder: Any = None
    path = []
    for part in loc:
        model = _unwrap(model)
        if (member := _tagged_member(model, part)) is not None:
            model = member
            continue
        holder = model
        path.append(part)
        if _is_model(model) and part in model.model_fields:
            model = model.model_fields[part].annotation
        elif get_origin(model) is dict:
            model = get_args(model)[1]  # part is the mapping's key (a field name)
        else:
            model = None
    return tuple(path), holder


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _tagged_member(annotation: Any, tag: Any) -> Any:
    """The member of a discriminated union (``Annotated[A | B, Field(discriminator=...)]``) that ``tag`` selects."""
    if get_origin(annotation) is not Annotated:
        return None
    union, *meta = get_args(annotation)
    field = next((m.discriminator for m in meta if isinstance(m, FieldInfo) and m.discriminator), None)
    for member in get_args(union) if isinstance(field, str) else ():
        if _is_model(member) and tag in get_args(member.model_fields[field].annotation):
            return member
    return None


def _unwrap(annotation: Any) -> Any:
    """X | None -> X."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation
