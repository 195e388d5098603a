"""Crash injection for the crash harness's child processes (tests/crash): on PYTHONPATH only there, never in the
product. ``CRASH_AT`` names one moment, ``module:Attr.path[@after][#n]``: the process SIGKILLs itself when the named
function is called (``@after``: when it returns) for the n-th time (default the first). SIGKILL, not an exception:
no ``finally``, no rollback message, no Airflow failure handling runs, as when a worker's machine dies.
``CRASH_QUERY_PAGE_SIZE`` makes Bulk query pages small, so that a kill inside the load into staging lands
between two pages of one query."""

import functools
import importlib
import os
import signal


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    point, _, nth = point.partition("#")
    point, _, when = point.partition("@")
    module_name, _, path = point.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]
    target = int(nth or 1)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == target and when != "after":
            _kill()
        result = original(*args, **kwargs)
        if calls[0] == target and when == "after":
            _kill()
        return result

    setattr(owner, name, wrapper)


if os.environ.get("CRASH_QUERY_PAGE_SIZE"):
    from retention.hooks import salesforce_bulk

    salesforce_bulk.QUERY_PAGE_SIZE = int(os.environ["CRASH_QUERY_PAGE_SIZE"])
if os.environ.get("CRASH_AT"):
    _install(os.environ["CRASH_AT"])
