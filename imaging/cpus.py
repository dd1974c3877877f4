"""The CPUs this process may use: Slurm's cgroup/affinity mask, not the node's core count."""

from __future__ import annotations

import os
import threading


def usable_cpus() -> int:
    """Cores in this process's affinity mask (what ``--cpus-per-task`` gives a job); all cores off Linux."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Reading, preprocessing and writing only have to keep ahead of the model: when the cores
# are oversubscribed, the scheduler should run the model's thread first.
BACKGROUND_NICENESS = 5


def run_in_background(increment: int = BACKGROUND_NICENESS) -> None:
    """Lower the calling thread's CPU priority by ``increment`` (Linux: this thread only).

    On Linux the nice value is per thread (setpriority(2) on the thread id); threads and
    processes it starts later inherit it. Elsewhere, or where it is refused, nothing changes.
    """
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
    except (AttributeError, OSError):
        return
