"""Where am I in a distributed job? Rank, local rank, world size, rendezvous.

Read once from the environment that started us: torchrun (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT), Slurm ``srun`` (SLURM_PROCID, SLURM_LOCALID,
SLURM_NTASKS, SLURM_JOB_NODELIST, SLURM_JOB_ID) or nothing (a single process).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[012-015,020],login1`` -> ``gpu012``.

    Uses ``scontrol show hostnames`` when it is on PATH (it knows every syntax);
    falls back to parsing the common ``prefix[a-b,c]`` form.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST '{nodelist}'")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def port_from_job_id(job_id: str | int) -> int:
    """A rendezvous port derived from the job id, so two jobs on one node never clash."""
    return 15000 + int(job_id) % 20000


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Build a :class:`DistEnv` from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)),
            source="torchrun",
        )
    # SLURM_PROCID is set inside `srun` steps; a batch script alone is one task.
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job_id = env.get("SLURM_JOB_ID", "0")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
            master_port=int(env.get("MASTER_PORT") or port_from_job_id(job_id)),
            source="slurm",
        )
    return DistEnv()
