"""Fault injection: the failures a real org produces, switched on at run time (all off by default).

Each kind imitates what Salesforce sends, so client retry and failure paths can be tested:

- ``rate_limit``: 403 ``REQUEST_LIMIT_EXCEEDED`` (Salesforce sends no 429 for API limits);
- ``server_error``: 500 ``UNKNOWN_EXCEPTION`` or 503 ``SERVER_UNAVAILABLE`` (option ``status``);
- ``slow``: every API response delayed by ``seconds``;
- ``slow_job``: the next Bulk API 2.0 job stays ``InProgress`` longer, as a busy org keeps a job waiting (so
  clients' polling, and a job's progress, can be observed): each 10,000-record batch of an ingest job takes at
  least ``seconds`` (its records counted processed at its end), a query job waits ``seconds`` before it runs;
- ``record_failures``: a ``rate`` fraction of ingest rows fail with ``code`` (default
  ``UNABLE_TO_LOCK_ROW``), drawn from a seeded generator so a run is repeatable;
- ``session_expiry``: every issued session is invalidated at once (401 ``INVALID_SESSION_ID`` until
  the client logs in again);
- ``job_failure``: the next Bulk API 2.0 ingest job processes the first half of its rows, commits them, then
  ends ``Failed``: "Changes made by a job that fails or is aborted aren't rolled back" (Bulk API 2.0 Developer
  Guide), so its successful and failed results show what it did and ``unprocessedrecords`` the rest;
- ``hard_delete_denied``: the API user loses the "Bulk API Hard Delete" permission: creating a
  ``hardDelete`` job (Bulk 2.0 or 1.0) is refused with ``FEATURENOTENABLED`` / ``FeatureNotEnabled``
  (``hardDelete operation requires special user profile permission, ...``); other operations work.

- ``nul_in_results``: Bulk API 2.0 query result pages carry a NUL character (U+0000) wherever the text of option
  ``text`` occurs in a row. Salesforce's documentation is silent on NULs, but a text field can hold one (pasted
  in) and the Bulk API sends it as it is: clients break on it (airbytehq/airbyte#8300, heroku/salesforce-bulk#35)
  or strip it (singer-io/tap-salesforce#21; simple-salesforce's ``filter_null_bytes``). This org lives in
  Postgres, whose text cannot hold a NUL, so it can only send one this way.

``count`` limits a fault to the next N requests (or N rows for ``record_failures``, or N refused
``hardDelete`` job creations for ``hard_delete_denied``, N jobs for ``slow_job``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

KINDS = ("rate_limit", "server_error", "slow", "record_failures", "session_expiry", "hard_delete_denied",
         "job_failure", "slow_job", "nul_in_results")

# What a fault may be given besides its kind (each a field of Fault).
OPTIONS = ("count", "rate", "status", "seconds", "code", "seed", "text")

TRANSIENT_RECORD_CODES = ("UNABLE_TO_LOCK_ROW", "API_TEMPORARILY_UNAVAILABLE")


@dataclass
class Fault:
    kind: str
    count: int | None = None  # remaining uses; None = until switched off
    rate: float = 1.0
    status: int = 503
    seconds: float = 0.0
    code: str = "UNABLE_TO_LOCK_ROW"
    seed: int = 0
    text: str = ""
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", *OPTIONS)}


class FaultError(ValueError):
    pass


class Faults:
    """Thread-safe registry of active faults, shared by every request handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Fault] = {}

    def set(self, kind: str, **options) -> Fault:
        if kind not in KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise FaultError(f"unknown option(s) for {kind}: {', '.join(sorted(unknown))}")
        options = {k: v for k, v in options.items() if v is not None}
        fault = Fault(kind, **options)
        if not 0.0 <= fault.rate <= 1.0:
            raise FaultError("rate must be between 0 and 1")
        if kind == "server_error" and fault.status not in (500, 503):
            raise FaultError("server_error status must be 500 or 503")
        if kind == "nul_in_results" and not fault.text:
            raise FaultError("nul_in_results needs the text to send as a NUL")
        fault.rng.seed(fault.seed)
        with self._lock:
            self._active[kind] = fault
        return fault

    def clear(self, kind: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._active.clear()
            else:
                self._active.pop(kind, None)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [f.as_dict() for f in self._active.values()]

    def take(self, kind: str) -> Fault | None:
        """The active fault of this kind if it fires now, using up one of its ``count``."""
        with self._lock:
            fault = self._active.get(kind)
            if fault is None:
                return None
            if kind != "record_failures" and fault.rate < 1.0 and fault.rng.random() >= fault.rate:
                return None
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    del self._active[kind]
            return fault

    def record_failure(self) -> tuple[str, str] | None:
        """For one ingest row: (statusCode, message) if this row should fail."""
        with self._lock:
            fault = self._active.get("record_failures")
            if fault is None or fault.rng.random() >= fault.rate:
                return None
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    del self._active["record_failures"]
        messages = {
            "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record or 1 records",
            "API_TEMPORARILY_UNAVAILABLE": "API temporarily unavailable",
        }
        return fault.code, messages.get(fault.code, "injected failure")


# What Salesforce answers when a user without the "Bulk API Hard Delete" permission creates a hardDelete
# job. Salesforce's API docs do not show this response; these are what clients report and check for: the
# message verbatim (Data Loader: "FeatureNotEnabled : hardDelete operation requires special user profile
# permission, please contact your system administrator"; jsforce's Bulk 1.0 error carries exceptionCode
# "FeatureNotEnabled"), and the Salesforce CLI (salesforcecli/plugin-data, `data delete bulk --hard-delete`)
# recognises the Bulk 2.0 refusal by errorCode "FEATURENOTENABLED". The HTTP status is our assumption:
# 400, like Bulk 2.0's other job-creation refusals.
HARD_DELETE_DENIED_CODE_V2 = "FEATURENOTENABLED"
HARD_DELETE_DENIED_CODE_V1 = "FeatureNotEnabled"
HARD_DELETE_DENIED_MESSAGE = ("hardDelete operation requires special user profile permission, please contact your "
                              "system administrator")
