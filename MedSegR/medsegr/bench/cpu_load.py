"""CPU used by *other* processes while a benchmark runs, and waiting for a quiet machine.

A busy machine inflates every number (with torch's intra-op threads on every core,
one competing process can slow token decoding many times over), so the benchmarks
report how many cores other processes kept busy during each measured block:
machine-wide busy time (``/proc/stat``) minus the benchmark's own CPU time, over the
wall time. Where ``/proc`` is missing the readings are 0.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: average foreign load (cores) above which a measurement counts as disturbed
BUSY_CORES = 0.25


def _clock_tick() -> float:
    return float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


@dataclass(frozen=True)
class CpuSample:
    """System-wide CPU seconds: busy (user+nice+system+irq+softirq) and steal."""

    busy_s: float
    steal_s: float

    @classmethod
    def now(cls) -> "CpuSample":
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return cls(0.0, 0.0)
        fields += [0] * (10 - len(fields))
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        tick = _clock_tick()
        return cls((user + nice + system + irq + softirq) / tick, steal / tick)


def own_cpu_s() -> float:
    """CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """CPU seconds used by this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def processes_cpu_s(pids: list[int]) -> Callable[[], float]:
    """A reader of the CPU seconds the running processes ``pids`` have used so far."""
    def read() -> float:
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / _clock_tick()  # utime + stime
        return total
    return read


def busy_cores(seconds: float) -> float:
    """Average number of busy cores, machine-wide, over the next ``seconds``."""
    a = CpuSample.now()
    time.sleep(seconds)
    return (CpuSample.now().busy_s - a.busy_s) / seconds


def wait_for_quiet(max_s: float, sample_s: float = 0.5, pause_s: float = 2.0,
                   log: Callable[[str], None] = lambda message: None) -> tuple[float, bool]:
    """Wait up to ``max_s`` until the machine uses fewer than :data:`BUSY_CORES` cores
    (the caller sleeps meanwhile). Returns (seconds waited, whether it went quiet)."""
    t0 = time.monotonic()
    if max_s <= 0:
        return 0.0, True
    while True:
        load = busy_cores(sample_s)
        if load < BUSY_CORES:
            return time.monotonic() - t0, True
        if time.monotonic() - t0 >= max_s:
            log(f"  machine still busy ({load:.2f} cores); going ahead")
            return time.monotonic() - t0, False
        log(f"  other processes use {load:.2f} cores; waiting ...")
        time.sleep(pause_s)


class ForeignCpu:
    """``with ForeignCpu() as load: work()`` then ``load.cores``: the average number of
    cores that processes other than ours kept busy during the block, and
    ``load.steal_cores`` (time the hypervisor gave to other guests). ``own`` reads our
    CPU seconds: this process by default, :func:`children_cpu_s` for a waited-for
    child, :func:`processes_cpu_s` for running processes."""

    def __init__(self, own: Callable[[], float] = own_cpu_s) -> None:
        self.own = own
        self.cores = 0.0
        self.steal_cores = 0.0
        self.wall_s = 0.0

    def __enter__(self) -> "ForeignCpu":
        self._cpu0, self._own0, self._t0 = CpuSample.now(), self.own(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu1, own1 = CpuSample.now(), self.own()
        self.wall_s = wall = time.monotonic() - self._t0
        if wall <= 0:
            return
        busy = cpu1.busy_s - self._cpu0.busy_s
        self.cores = max(0.0, busy - (own1 - self._own0)) / wall
        self.steal_cores = (cpu1.steal_s - self._cpu0.steal_s) / wall
