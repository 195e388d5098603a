"""What the benchmarks read from Linux while a deployment runs: each Airflow task process's peak resident memory,
and the CPU the sandbox (the emulated org and Connect) spends, so that neither is guessed from inside a task.

A sampler thread reads ``/proc`` every ``interval`` seconds:

- task processes: Airflow 3's task runner names its process ``airflow worker -- <task instance id>``
  (``setproctitle`` in ``airflow/sdk/execution_time/task_runner.py``); their ``VmHWM`` (the kernel's own
  high-water mark of resident memory) is kept per task instance id. The mark only grows, so a sample taken any
  time after the peak reads it; a peak in the last ``interval`` of a process's life would be missed.
- the sandbox's CPU: its server process (``python -m sandbox serve``: the org's REST and Bulk APIs, and the
  Connect sync loop), and the Postgres backends connected to the org's database (``sandbox_org``, named in
  each backend's process title) of the sandbox's own Postgres server (their parent process). A backend's CPU
  counts up to its last sample, so a connection that opens and closes between two samples is missed: the
  share reported is a lower bound.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field

TASK_TITLE = "airflow worker -- "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
BOOT = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # the process ended between listing and reading
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def started_at(pid: int) -> float | None:
    """The process's start as a Unix time (field 22 of /proc/<pid>/stat, in clock ticks after boot)."""
    stat = _read(f"/proc/{pid}/stat")
    return None if stat is None else BOOT + int(stat.rsplit(")", 1)[1].split()[19]) / CLOCK_TICKS


def parent(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return None if stat is None else int(stat.rsplit(")", 1)[1].split()[1])


def peak_rss_mb(pid: int) -> float | None:
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class TaskProcess:
    """One task process as sampled: the task instance it ran, its start, last sighting and peak memory."""

    ti_id: str
    pid: int
    started: float
    last_seen: float
    peak_rss_mb: float = 0.0


@dataclass
class Sampler:
    """Samples /proc in a thread between ``start()`` and ``stop()``; see the module docstring."""

    sandbox_pid: int
    postmaster_pid: int  # the org's Postgres server: other sandboxes on the machine have a sandbox_org too
    org_database: str = "sandbox_org"
    interval: float = 0.02
    cpu_every: int = 5  # CPU samples every 5 memory samples (0.1 s): enough to attribute it to tasks
    tasks: dict[str, TaskProcess] = field(default_factory=dict)
    # (unix time, sandbox server CPU s, org backends CPU s), cumulative
    cpu: list[tuple[float, float, float]] = field(default_factory=list)
    _backends: dict[tuple[int, float | None], float] = field(default_factory=dict)  # (pid, start) -> CPU s
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.sample(with_cpu=n % self.cpu_every == 0)
            n += 1
            self._stop.wait(self.interval)
        self.sample(with_cpu=True)

    def sample(self, *, with_cpu: bool = True) -> None:
        now = time.time()
        org_tag = f" {self.org_database} "
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            cmdline = _read(f"/proc/{entry.name}/cmdline")
            if not cmdline:
                continue
            pid = int(entry.name)
            ti_id = cmdline[len(TASK_TITLE):].strip("\0 ").split(maxsplit=1)[0] if cmdline.startswith(TASK_TITLE) \
                else ""
            if len(ti_id) == 36 and ti_id.count("-") == 4:  # a task instance's UUID, not "LocalExecutor: <idle>"
                rss = peak_rss_mb(pid)
                seen = self.tasks.get(ti_id)
                if seen is None or seen.pid != pid:  # a retry runs in a new process: keep the larger peak
                    began = started_at(pid)
                    if began is None:
                        continue
                    old_peak = seen.peak_rss_mb if seen else 0.0
                    seen = self.tasks[ti_id] = TaskProcess(ti_id, pid, began, now, old_peak)
                seen.last_seen = now
                if rss is not None:
                    seen.peak_rss_mb = max(seen.peak_rss_mb, rss)
            elif (with_cpu and cmdline.startswith("postgres: ") and org_tag in cmdline.replace("\0", " ")
                  and parent(pid) == self.postmaster_pid):
                used = cpu_seconds(pid)
                if used is not None:  # keyed with its start too: a new backend may reuse an ended one's pid
                    self._backends[pid, started_at(pid)] = used
        if with_cpu:
            server = cpu_seconds(self.sandbox_pid)
            if server is not None:
                self.cpu.append((now, server, sum(self._backends.values())))

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds (sandbox server, org backends) spent between two Unix times, from the nearest samples."""
        if not self.cpu:
            return 0.0, 0.0
        times = [t for t, _, _ in self.cpu]
        a = self.cpu[max(0, bisect.bisect_left(times, start) - 1)]
        b = self.cpu[min(len(times) - 1, bisect.bisect_left(times, end))]
        return b[1] - a[1], b[2] - a[2]
