"""The CPUs this process may use: Slurm's cgroup/affinity mask, not the node's core count."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """Cores in this process's affinity mask (what ``--cpus-per-task`` gives a job); all cores off Linux."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
