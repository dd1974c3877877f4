"""Where am I in a distributed job? Rank, local rank, world size, rendezvous, job tags.

A leaf module (it imports nothing of ours): the DDP set-up (engine), the run's job
tags (tracking) and the sbatch rendering (launch) all read the same environment, and
none of those layers may import another's.

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


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: ``a[1,2],b`` -> ``["a[1,2]", "b"]``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (q.strip() for q in parts) if p]


def _expand_range(body: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"cannot parse SLURM_JOB_NODELIST '{nodelist}': bad range '{item}'")
        width = len(lo)  # zero padding: gpu[008-010] -> gpu008 gpu009 gpu010
        out += [str(n).zfill(width) for n in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_hostlist(nodelist: str) -> list[str]:
    """Expand a Slurm host list without Slurm: ``gpu[01-02,05],rack[1-2]-n[1-2]`` -> every host, in order.

    Raises
    ------
    ValueError
        Unbalanced brackets or a range that is not ``N`` / ``N-M``.
    """
    hosts: list[str] = []
    for item in _split_top(nodelist):
        expanded = [""]
        rest = item
        while rest:
            m = re.match(r"([^\[\]]*)\[([^\]]*)\](.*)$", rest)
            if m is None:
                if "[" in rest or "]" in rest:
                    raise ValueError(f"cannot parse SLURM_JOB_NODELIST '{nodelist}': unbalanced brackets")
                expanded = [e + rest for e in expanded]
                break
            prefix, body, rest = m.groups()
            expanded = [e + prefix + n for e in expanded for n in _expand_range(body, nodelist)]
        hosts += expanded
    return hosts


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``gpu[012-015,020],login1`` -> ``gpu012``.

    :func:`parse_hostlist` handles Slurm's host-list syntax (checked against
    ``scontrol show hostnames`` on a real Slurm in the integration tests);
    ``scontrol`` is asked only for a form it cannot parse. It is not asked first
    because without a reachable slurm.conf it retries for a minute.

    Raises
    ------
    ValueError
        Neither the parser nor ``scontrol`` can read the node list.
    """
    try:
        hosts = parse_hostlist(nodelist)
    except ValueError:
        hosts = []
    if hosts:
        return hosts[0]
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST '{nodelist}'") from exc
    if not out:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST '{nodelist}': no host")
    return out[0]


# Rendezvous ports: below Linux's ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999 by default), where the kernel hands out ports for outgoing
# connections and a rendezvous port could already be taken. The same formula is in
# imaging/launch/templates/train.sbatch.j2.
PORT_BASE, PORT_SPAN = 20000, 10000


def port_from_job_id(job_id: str | int) -> int:
    """A rendezvous port derived from the job id (20000-29999), so two jobs on one node do not clash."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def job_tags(environ: Mapping[str, str] | None = None, gpu_model: str = "none") -> dict[str, str]:
    """Where a run ran, for its MLflow tags: Slurm job id, array task, node list, world size, GPU model.

    Outside Slurm the Slurm keys are absent; ``world_size`` and ``gpu_model`` are always there.
    """
    env = os.environ if environ is None else environ
    tags = {"dist.world_size": str(dist_env(env).world_size), "gpu_model": gpu_model}
    for tag, var in (("slurm.job_id", "SLURM_JOB_ID"), ("slurm.array_job_id", "SLURM_ARRAY_JOB_ID"),
                     ("slurm.array_task_id", "SLURM_ARRAY_TASK_ID"), ("slurm.nodelist", "SLURM_JOB_NODELIST"),
                     ("slurm.cluster", "SLURM_CLUSTER_NAME"), ("slurm.partition", "SLURM_JOB_PARTITION"),
                     ("slurm.restart_count", "SLURM_RESTART_COUNT")):
        if env.get(var):
            tags[tag] = env[var]
    return tags


# Step ids Slurm gives the batch script and the extern step (0xfffffffe / 0xfffffffc ...).
_SPECIAL_STEP_IDS = range(0xFFFFFFF0, 0x100000000)


def in_srun_step(env: Mapping[str, str]) -> bool:
    """True inside a task launched by ``srun`` (not the batch shell, not an ``salloc`` shell)."""
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
    return step is not None and step.isdigit() and int(step) not in _SPECIAL_STEP_IDS


def slurm_world_size(env: Mapping[str, str]) -> int:
    """Tasks of this step (``srun -n1`` inside a bigger job is one process, not the job's N)."""
    return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)


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
    # The batch shell also has SLURM_PROCID=0 and SLURM_NTASKS=<job's tasks>, but it is
    # one process: only an `srun` step (SLURM_STEP_ID set) is one rank of many.
    if "SLURM_PROCID" in env and in_srun_step(env) and slurm_world_size(env) > 1:
        job_id = env.get("SLURM_JOB_ID", "0")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=slurm_world_size(env),
            master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
            master_port=int(env.get("MASTER_PORT") or port_from_job_id(job_id)),
            source="slurm",
        )
    return DistEnv()
