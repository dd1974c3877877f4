"""Ask Slurm about a job: ``squeue``, ``scontrol show job``, ``sacct`` when accounting exists.

Sites differ: many run slurmdbd (``sacct`` knows every job for months), some
(and our test cluster) do not, and ``squeue``/``scontrol`` forget a job
``MinJobAge`` seconds after it ends. :func:`job_states` tries them in that order
of freshness and says which one answered.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                      "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
_KV_RE = re.compile(r"(\S+?)=(\S*)")


@dataclass
class TaskState:
    """One job, or one array task (``job_id`` like ``123_4``)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    restarts: int = 0
    nodes: str = ""
    elapsed: str = ""
    source: str = ""  # squeue | scontrol | sacct
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state.split()[0].rstrip("+") in FINISHED


def _run(cmd: list[str], env: Mapping[str, str] | None) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env=None if env is None else dict(env))
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s: %s", cmd[0], exc)
        return None
    if proc.returncode != 0:
        log.debug("%s failed: %s", " ".join(cmd), proc.stderr.strip())
        return None
    return proc.stdout


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` output (one job per line, ``Key=Value`` pairs) -> dicts."""
    jobs = []
    for line in text.splitlines():
        if line.strip():
            jobs.append(dict(_KV_RE.findall(line)))
    return jobs


def scontrol_jobs(job_id: str, env: Mapping[str, str] | None = None) -> list[TaskState]:
    """``scontrol show job -o JOBID``: every task of an array, with restart counts and exit codes."""
    out = _run(["scontrol", "show", "job", "-o", job_id], env)
    if not out:
        return []
    states = []
    for f in parse_scontrol(out):
        jid = f.get("JobId", job_id)
        if f.get("ArrayTaskId") and f.get("ArrayJobId"):
            jid = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
        states.append(TaskState(job_id=jid, state=f.get("JobState", "?"), reason=f.get("Reason", ""),
                                exit_code=f.get("ExitCode", ""), restarts=int(f.get("Restarts", "0") or 0),
                                nodes=f.get("NodeList", ""), elapsed=f.get("RunTime", ""),
                                source="scontrol", fields=f))
    return states


def squeue_jobs(job_id: str, env: Mapping[str, str] | None = None) -> list[TaskState]:
    """``squeue`` lists pending/running jobs only (finished ones vanish after MinJobAge)."""
    out = _run(["squeue", "-h", "-j", job_id, "-r", "-o", "%i|%T|%r|%M|%N"], env)
    states = []
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            states.append(TaskState(job_id=parts[0], state=parts[1], reason=parts[2], elapsed=parts[3],
                                    nodes=parts[4], source="squeue"))
    return states


def sacct_jobs(job_id: str, env: Mapping[str, str] | None = None) -> list[TaskState]:
    """``sacct`` (needs slurmdbd): the history, including jobs Slurm's controller has forgotten."""
    out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,Reason,ExitCode,Elapsed,NodeList"],
               env)
    states = []
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) == 6:
            states.append(TaskState(job_id=parts[0], state=parts[1], reason=parts[2], exit_code=parts[3],
                                    elapsed=parts[4], nodes=parts[5], source="sacct"))
    return states


def job_states(job_id: str, env: Mapping[str, str] | None = None) -> list[TaskState]:
    """The freshest answer: ``scontrol`` (live + recently finished), else ``sacct``, else ``squeue``."""
    for query in (scontrol_jobs, sacct_jobs, squeue_jobs):
        states = query(job_id, env)
        if states:
            return states
    return []


def cancel(job_id: str, env: Mapping[str, str] | None = None, *, signal: str | None = None,
           batch_only: bool = False) -> bool:
    """``scancel`` a job or array task (``signal``: send it instead of cancelling)."""
    cmd = ["scancel"]
    if signal:
        cmd.append(f"--signal={signal}")
    if batch_only:
        cmd.append("--batch")
    return _run([*cmd, job_id], env) is not None
