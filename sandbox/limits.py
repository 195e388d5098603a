"""The org's daily allocations as the Limits resource (``/services/data/vXX.X/limits``) reports them, consumed by
the calls and jobs that the docs say consume them.

- ``DailyApiRequests``: every REST and Bulk 2.0 call but the Versions resource ("calls to the Versions URI ...
  do not count towards your org's limit": Limit Info Header, REST API Developer Guide). The docs exempt nothing
  else, so a call to Limits itself counts.
- ``DailyBulkApiBatches``: 15,000 a rolling 24 hours, "shared between Bulk API and Bulk API 2.0"; "In Bulk API
  2.0, only ingest jobs consume batches. Query jobs don't" (Bulk API and Bulk API 2.0 Limits and Allocations).
  "Salesforce creates a separate batch for every 10,000 records in your job data" and "There is always an empty
  'parent' batch which is related to the initial upload" (Understanding Bulk API 2.0 Ingest). Whether the parent
  batch counts against the allocation the docs do not say: it counts here, the stricter reading.
- ``DailyBulkV2QueryJobs``: 10,000 query jobs a rolling 24 hours, one per job created (Bulk API 2.0 Limits and
  Allocations: "The current number can be seen in the DailyBulkV2QueryJobs value").
- ``DailyBulkV2QueryFileStorageMB``: 1 TB of query results a day; reported, not consumed here.

Tests set an allocation lower, or an org nearly spent, through ``/__sandbox/org`` with
``{"limits": {"DailyApiRequests": {"Max": 15000, "Remaining": 40}}}``; ``{"reset": true}`` restores the start.
The allocations never roll over: a sandbox lives for a test session, not a day.
"""

from __future__ import annotations

import math
import threading

DEFAULTS = {
    "DailyApiRequests": 1_000_000,
    "DailyBulkApiBatches": 15_000,
    "DailyBulkV2QueryJobs": 10_000,
    "DailyBulkV2QueryFileStorageMB": 976_562,  # 1 TB
}
# "Salesforce creates a separate batch for every 10,000 records in your job data."
RECORDS_PER_BATCH = 10_000


def ingest_batches(records: int) -> int:
    """Batches a Bulk 2.0 ingest job of ``records`` consumes: the parent batch and one per 10,000 records."""
    return 1 + math.ceil(records / RECORDS_PER_BATCH)


class OrgLimits:
    """Thread-safe Max and used count of each allocation; Remaining is never below 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._max = dict(DEFAULTS)
        self._counted = dict.fromkeys(DEFAULTS, 0)  # what calls and jobs really consumed
        self._offset = dict.fromkeys(DEFAULTS, 0)  # what a test declared used on top (may be negative)

    def _used(self, name: str) -> int:
        return self._counted[name] + self._offset[name]

    def consume(self, name: str, amount: int = 1) -> int:
        """Use ``amount`` of an allocation; returns the amount used so far."""
        with self._lock:
            self._counted[name] += amount
            return self._used(name)

    def used(self, name: str) -> int:
        with self._lock:
            return self._used(name)

    def max(self, name: str) -> int:
        with self._lock:
            return self._max[name]

    def remaining(self, name: str) -> int:
        with self._lock:
            return max(self._max[name] - self._used(name), 0)

    def exceeded(self, name: str) -> bool:
        """More used than the allocation allows (the call that reaches Max itself still succeeds)."""
        with self._lock:
            return self._used(name) > self._max[name]

    def update(self, changes: dict) -> None:
        """``{"DailyApiRequests": {"Max": 15000, "Remaining": 40}}``: Max sets the allocation, Remaining sets how
        much of it is left now (as if the rest had been used). Raises ValueError naming what is wrong."""
        if not isinstance(changes, dict):
            raise ValueError("limits must map a limit name to {\"Max\": n, \"Remaining\": n}")
        for name, values in changes.items():
            if name not in DEFAULTS:
                raise ValueError(f"unknown limit {name!r}; expected one of {', '.join(sorted(DEFAULTS))}")
            if not isinstance(values, dict) or not values or set(values) - {"Max", "Remaining"} or not all(
                    isinstance(v, int) and v >= 0 for v in values.values()):
                raise ValueError(f"limits: {name}: expected {{\"Max\": n, \"Remaining\": n}} with whole numbers >= 0")
        with self._lock:
            for name, values in changes.items():
                if "Max" in values:
                    self._max[name] = values["Max"]
                if "Remaining" in values:
                    used = self._max[name] - min(values["Remaining"], self._max[name])
                    self._offset[name] = used - self._counted[name]

    def reset(self) -> None:
        """The allocations back to their defaults, and used back to what was really consumed."""
        with self._lock:
            self._max = dict(DEFAULTS)
            self._offset = dict.fromkeys(DEFAULTS, 0)

    def snapshot(self) -> dict:
        """The Limits resource's body for these allocations."""
        with self._lock:
            return {name: {"Max": self._max[name], "Remaining": max(self._max[name] - self._used(name), 0)}
                    for name in DEFAULTS}
