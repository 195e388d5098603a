"""What the steps of a run hand each other, and the ids of the tasks that run them: one definition each.

Each result travels as its operator's XCom return value, a plain JSON object (readable in the Airflow UI and by
any task), and is read back with ``<Result>.pull(ti)``. Cheap to import: the DAG factory and the alert callback
use the task ids in every process.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


class Task(enum.StrEnum):
    """The task ids of a policy DAG, in the order they run."""

    WAIT_FOR_CONNECT_SYNC = "wait_for_connect_sync"
    EXTRACT = "extract"
    SUBSET = "subset"
    LOAD_TO_CACHE = "load_to_cache"
    VALIDATE = "validate_row_counts"
    ACT = "delete_or_mask"  # mapped: one task instance per chunk of the run's records
    VERIFY = "verify_in_salesforce"  # mapped over the same chunks
    CONFIRM = "confirm_and_report"


class _Result:
    """A step's result: ``asdict`` for XCom, ``pull`` to read the one its task pushed in this run."""

    task: ClassVar[Task]
    key: ClassVar[str] = "return_value"  # the XCom key it travels under
    _nested: ClassVar[dict[str, type]] = {}

    def to_xcom(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in names}
        for name, kind in cls._nested.items():
            if name in values:
                items = values[name]
                values[name] = ({k: kind.from_xcom(v) for k, v in items.items()} if isinstance(items, dict)
                                else [kind.from_xcom(v) for v in items])
        return cls(**values)

    @classmethod
    def pull(cls, ti) -> Self | None:
        """This run's result of the step (None: the task did not return one, e.g. it was skipped)."""
        data = ti.xcom_pull(task_ids=str(cls.task), key=cls.key)
        return cls.from_xcom(data) if data else None

    @classmethod
    def pull_chunks(cls, ti, map_index: int | None = None) -> list[Self]:
        """The results of a mapped step: every chunk's, or the one of ``map_index`` (none when it returned none)."""
        if map_index is None:  # Airflow then returns every map index's value (map_indexes=None would mean -1)
            data = ti.xcom_pull(task_ids=str(cls.task))
        else:
            data = [ti.xcom_pull(task_ids=str(cls.task), map_indexes=map_index)]
        if isinstance(data, dict):  # a single value rather than a sequence
            data = [data]
        return [cls.from_xcom(d) for d in data or [] if d]


@dataclass
class ChildStaged(_Result):
    """One cascade child object as extract staged it."""

    object: str
    table: str
    candidates: int  # the children of every parent past the cutoff: what the org's count is compared with
    staged: int = 0


@dataclass
class Extracted(_Result):
    """extract: the counts it saw and what later steps need to know about the staged records."""

    task: ClassVar[Task] = Task.EXTRACT
    _nested: ClassVar[dict[str, type]] = {"children": ChildStaged}

    run_key: str
    cutoff: str
    eligible: int
    held: int
    done: int  # already retained and acted on (or refused for good) by an earlier run
    staged: int
    held_ids: list[str] = field(default_factory=list)
    field_types: dict[str, str] = field(default_factory=dict)  # Salesforce type of each staged field
    date_type: str | None = None
    field_lengths: dict[str, int] = field(default_factory=dict)  # describe's length of each masked field
    count_soql: str | None = None  # the org's count of the policy's selection, for validation (same cutoff, today)
    children: list[ChildStaged] = field(default_factory=list)
    held_via_children: dict[str, str] = field(default_factory=dict)  # parent: its held child
    blocked: dict[str, str] = field(default_factory=dict)  # parent: why a delete must not take it
    cascade_relations: list[dict[str, str]] = field(default_factory=list)  # cascading relationships not retained
    preview: list[dict[str, Any]] | None = None  # dry runs: a sample of the rows as they would be retained


@dataclass
class Chunk(_Result):
    """A share of the run's staged records, acted on and verified by one mapped task instance: the records whose
    sfid is after ``after`` (None: from the first) up to ``upto`` (None: to the last). The ranges of one run's chunks
    follow each other without gap, so every record belongs to exactly one."""

    index: int
    after: str | None = None
    upto: str | None = None
    records: int = 0


@dataclass
class ChildValidated(_Result):
    counts: dict[str, Any] | None
    salesforce_candidates: int


@dataclass
class Validated(_Result):
    """validate_row_counts: the gate passed, with the counts it compared. Its ``chunks`` are the task's return value
    (what the mapped tasks expand over: Airflow maps over return values only), this the XCom ``validated``."""

    task: ClassVar[Task] = Task.VALIDATE
    key: ClassVar[str] = "validated"
    _nested: ClassVar[dict[str, type]] = {"children": ChildValidated, "chunks": Chunk}

    message: str
    counts: dict[str, Any] | None
    salesforce_total: int
    data_docs: str | None = None
    children: dict[str, ChildValidated] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)  # what the mapped act and verify tasks each take


@dataclass
class Acted(_Result):
    """delete_or_mask: what Salesforce did with the run's records (one chunk's, or the run's once merged)."""

    task: ClassVar[Task] = Task.ACT

    bulk_job_ids: list[str] = field(default_factory=list)
    done: int = 0
    refused: int = 0
    failed: int = 0
    held_at_action: list[str] = field(default_factory=list)  # came under a hold between extract and the act
    operation_used: str | None = None
    hard_delete_fallback: bool = False

    @classmethod
    def merged(cls, chunks: list[Acted]) -> Acted:
        """The run's act from its chunks'."""
        operations = sorted({o for c in chunks for o in (c.operation_used or "").split(",") if o})
        # A job is listed once, even when two chunks both settled it (an earlier attempt's job whose records the
        # chunks of a cleared run share).
        jobs = list(dict.fromkeys(j for c in chunks for j in c.bulk_job_ids))
        return cls(bulk_job_ids=jobs, done=sum(c.done for c in chunks),
                   refused=sum(c.refused for c in chunks), failed=sum(c.failed for c in chunks),
                   held_at_action=sorted({i for c in chunks for i in c.held_at_action}),
                   operation_used=",".join(operations) or None,
                   hard_delete_fallback=any(c.hard_delete_fallback for c in chunks))


@dataclass
class Verified(_Result):
    """verify_in_salesforce: one chunk's records reported done, read back from the org with one Bulk query job."""

    task: ClassVar[Task] = Task.VERIFY

    checked: int = 0  # records reported done that the org was asked about
    not_applied: int = 0  # of those, still live (delete) or not showing the values sent (mask)
    sample: list[str] = field(default_factory=list)  # a few of them, for the message


@dataclass
class Reported(_Result):
    """confirm_and_report: the ledger row written and the run's counts."""

    task: ClassVar[Task] = Task.CONFIRM

    ledger_id: int
    status: str
    counts: dict[str, Any] = field(default_factory=dict)
    message: str = ""
