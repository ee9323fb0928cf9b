"""CPU time and peak memory of processes, from /proc (Linux), grouped by role.

CPU is utime + stime from /proc/<pid>/stat. A sampler thread reads every tracked
process twice a second and keeps the last value seen, so a process that exits during
the measurement (a PostgreSQL backend) still counts up to its last sample; a process
first seen after the start counts from zero (it was born during the measurement).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")

# PostgreSQL's shared background processes (their work is the database's, whoever asks).
_PG_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "stats collector",
    "archiver",
)


def cpu_seconds(pid: int) -> float | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int | None:
    """A number of /proc/<pid>/status: VmHWM (peak RSS) and VmRSS in kB, Threads..."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def rabbitmq_pids() -> list[int]:
    """The broker: the Erlang VM running RabbitMQ (beam.smp)."""
    return [pid for pid in all_pids() if _comm(pid) == "beam.smp"]


def postgres_pids(database: str) -> list[int]:
    """PostgreSQL's shared background processes and the backends of ``database`` only
    (other databases on the server are other people's work)."""
    found = []
    for pid in all_pids():
        if _comm(pid) != "postgres":
            continue
        title = _cmdline(pid)
        ours = f" {database} " in title or title.endswith(f" {database}")
        if ours or any(f": {name}" in title for name in _PG_BACKGROUND):
            found.append(pid)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine (all CPUs, every process) since boot."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class _Tracked:
    first: float
    last: float


@dataclass
class CpuMeter:
    """CPU seconds per group of processes between :meth:`start` and :meth:`stop`.

    ``groups`` maps a group name to a function listing its pids now (re-evaluated at
    every sample, so processes that come and go are followed)."""

    groups: dict[str, Callable[[], list[int]]]
    interval_s: float = 0.5
    _seen: dict[str, dict[int, _Tracked]] = field(default_factory=dict)
    _machine: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: bool = False

    def start(self) -> CpuMeter:
        self._machine = machine_busy_seconds()
        self._seen = {name: {} for name in self.groups}
        self._sample(baseline=True)
        self._started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self, baseline: bool = False) -> None:
        for name, lister in self.groups.items():
            seen = self._seen[name]
            for pid in lister():
                value = cpu_seconds(pid)
                if value is None:
                    continue
                tracked = seen.get(pid)
                if tracked is None:
                    seen[pid] = _Tracked(value if baseline else 0.0, value)
                else:
                    tracked.last = value

    def stop(self) -> dict[str, float]:
        """CPU seconds per group, and ``other``: the rest of the machine's CPU time in
        the meantime (processes outside the benchmark: should be near zero)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        used = {
            name: round(sum(t.last - t.first for t in seen.values()), 2)
            for name, seen in self._seen.items()
        }
        machine = machine_busy_seconds() - self._machine
        used["other"] = round(max(0.0, machine - sum(used.values())), 2)
        return used
