"""How many threads a job's compute may use right now: the cores the rest of the machine leaves free.

A job computes with torch's intra-op threads (one per core by default). Those threads meet at a
barrier after every operation, so a parallel region is as slow as its slowest thread: when another
program keeps a core busy and the worker runs at a lower priority than it (jobs.lower_priority),
the thread on that core is descheduled for most of each time slice while the other one spins at
the barrier. On a 2-core machine beside one busy process, sampling with 2 threads ran at 5.9
tokens/s and with 1 thread at 136 (bench/cores.py, docs/benchmarks.md). So a job measures what the
other processes use (from /proc/stat, less its own time) and sets torch's thread count to the free
cores, at least one, never more than it started with. Where /proc/stat cannot be read (not Linux)
nothing changes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
CHECK_EVERY_S = 2.0


def _busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait), or None."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CoreShare:
    """``fit()``, called now and then from the thread that computes (a job's progress report), sets
    torch's thread count to the cores the other processes left free over the time since the last
    reading, between 1 and the count it started with."""

    def __init__(self, cores: int | None = None, most: int | None = None):
        import torch

        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.cores = cores
        self.most = most or torch.get_num_threads()
        self._last = self._reading()

    @staticmethod
    def _reading() -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(), _own_seconds()

    def others(self, at_least_s: float = CHECK_EVERY_S) -> float | None:
        """Cores the other processes kept busy since the last reading, at least ``at_least_s`` ago
        (None: unknown, or too soon to say)."""
        if time.monotonic() - self._last[0] < at_least_s:
            return None  # too soon: /proc/stat is not read on every progress report
        now = self._reading()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        if busy0 is None or busy1 is None:
            return None
        self._last = now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)

    def threads_for(self, others: float) -> int:
        """Threads for a machine whose other processes keep ``others`` cores busy."""
        return max(1, min(self.most, int(self.cores - others + 0.5)))

    def fit(self, log=None, at_least_s: float = CHECK_EVERY_S) -> int | None:
        """Set torch's thread count to the free cores, as read over the last ``at_least_s`` seconds or
        more; returns the new count when it changed (and says so in ``log``, a logging.Logger)."""
        import torch

        others = self.others(at_least_s)
        if others is None:
            return None
        threads = self.threads_for(others)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        if log is not None:
            log.info("other processes keep %.1f of %d cores busy: %d threads", others, self.cores, threads)
        return threads

    def restore(self) -> None:
        """Back to the thread count it started with (a job that ends leaves the process as it found it)."""
        import torch

        if torch.get_num_threads() != self.most:
            torch.set_num_threads(self.most)
