"""Background load on a shared machine: how much CPU time *other* processes take while ``vtp-bench`` times.

On a machine shared with other jobs the timings are noisy, and torch's OpenMP thread team suffers most (a parallel
region waits for its slowest thread, so one descheduled thread stalls every op). Each section measures the share of
CPU time taken by other processes (from ``/proc/stat``) in the second before its work (:func:`load_before`) and
during its timed runs (:class:`ForeignLoad`), and flags timings above :data:`FOREIGN_LOAD_WARN`.
"""

from __future__ import annotations

import os
import time
from typing import Callable

FOREIGN_LOAD_WARN = 0.1  # share of all CPU time used by other processes above which timings are flagged


def loadavg() -> float | None:
    """1-minute load average (runnable processes; None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over all CPUs since boot, from /proc/stat (None where unavailable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


class ForeignLoad:
    """Share of the machine's CPU time used by *other* processes over an interval: (all busy CPU time − this
    process's CPU time) / (wall time × CPUs), in [0, 1]; None where /proc/stat is unavailable. The interval starts
    at construction and ends at each :meth:`share` call."""

    def __init__(self):
        self.j0, self.c0, self.w0 = cpu_jiffies(), time.process_time(), time.perf_counter()

    def share(self) -> float | None:
        """Other processes' share of all CPU time since construction, in [0, 1] (None without /proc/stat)."""
        j1 = cpu_jiffies()
        if self.j0 is None or j1 is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - self.j0[0]) / hz
        wall_cpu = (j1[1] - self.j0[1]) / hz  # wall time × CPUs, as the kernel counts it
        own = time.process_time() - self.c0
        return min(max((busy - own) / wall_cpu, 0.0), 1.0) if wall_cpu > 0 else None


def load_before() -> tuple[float | None, float | None]:
    """(1-min load average, other processes' CPU share over the next second, in [0, 1]) — taken before a section's
    work (sleeps one second)."""
    load = loadavg()
    probe = ForeignLoad()
    time.sleep(1.0)
    return load, probe.share()


def warn_busy(busy_before: float | None, log: Callable[[str], None]) -> None:
    """Logs a warning when other processes took more than :data:`FOREIGN_LOAD_WARN` of the CPUs (share in [0, 1])
    in the second before a section."""
    if (busy_before or 0.0) > FOREIGN_LOAD_WARN:
        log(f"WARNING: other processes used {100 * busy_before:.0f} % of the CPUs in the second before this section: "
            "timings will be noisy (torch's multi-threaded ops most of all)")
