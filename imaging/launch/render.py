"""Render the sbatch scripts in ``imaging/launch/templates/*.sbatch.j2`` from the ``launcher`` config.

The templates are plain bash with ``#SBATCH`` lines and comments, so a rendered
script can be read, edited and submitted by hand. Rendering is a pure function
of its inputs (no clock, no environment), which is what lets
``tests/reference/`` hold byte-identical expected scripts.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from imaging.errors import UsageError
from imaging.launch.preempt import EXIT_PREEMPTED

JOB_KINDS = ("train", "infer", "ingest")
TEMPLATES = {"train": "train.sbatch.j2", "infer": "infer_array.sbatch.j2", "ingest": "ingest.sbatch.j2"}
_TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


class LauncherConfigError(UsageError):
    """A ``launcher.*`` value Slurm would reject (or silently misread): exit 2, like any config error."""


def default_templates_dir() -> Path:
    """The templates shipped in the package (``imaging/launch/templates``)."""
    from imaging.resources import TEMPLATES_DIR

    return TEMPLATES_DIR


@dataclass(frozen=True)
class JobSpec:
    """Everything a template needs besides the launcher config.

    Attributes
    ----------
    kind: ``train`` | ``infer`` | ``ingest``.
    overrides: the job's Hydra overrides, as typed (launcher ones removed).
    job_dir: where the script and ``slurm-%j.out`` logs go (``<run_dir>/slurm``).
    workdir: ``--chdir`` of the job (the submit directory).
    job_name: ``--job-name``.
    run_dir: training run directory (checkpoints, ``mlflow_run_id``); inference/ingest: output dir.
    """

    kind: str
    overrides: Sequence[str]
    job_dir: Path
    workdir: Path
    job_name: str
    run_dir: Path
    extra_context: Mapping[str, Any] = field(default_factory=dict)


def _check(launcher: Mapping[str, Any]) -> None:
    time_ = launcher.get("time")
    if time_ is not None and not _TIME_RE.match(str(time_)):
        raise LauncherConfigError(f"launcher.time='{time_}': use D-HH:MM:SS, HH:MM:SS or MM (Slurm --time)")
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "signal_lead_s", "max_requeues", "array_tasks"):
        value = launcher.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise LauncherConfigError(f"launcher.{key}={value!r}: expected a non-negative integer")
    if launcher.get("nodes") is not None and int(launcher["nodes"]) < 1:
        raise LauncherConfigError("launcher.nodes must be >= 1")


def tasks_per_node(launcher: Mapping[str, Any]) -> int:
    """One task (one DDP rank) per GPU; ``launcher.tasks_per_node`` wins when set."""
    explicit = launcher.get("tasks_per_node")
    if explicit:
        return int(explicit)
    return max(1, int(launcher.get("gpus_per_node") or 0))


def array_spec(launcher: Mapping[str, Any]) -> str:
    """``--array`` value: ``launcher.array_indices`` (re-submit some shards) or ``0-(N-1)``, plus ``%throttle``."""
    indices = launcher.get("array_indices")
    n = int(launcher.get("array_tasks") or 1)
    if n < 1:
        raise LauncherConfigError(f"launcher.array_tasks={n}: need at least one shard")
    spec = str(indices) if indices not in (None, "") else (f"0-{n - 1}" if n > 1 else "0")
    throttle = launcher.get("array_throttle")
    return f"{spec}%{int(throttle)}" if throttle else spec


def job_command(launcher: Mapping[str, Any], spec: JobSpec, *extra: str) -> str:
    """The shell words of ``imaging <kind> <overrides...>`` (quoted), inside the container if any."""
    imaging = str(launcher.get("imaging_cmd") or "imaging")
    words = [*imaging.split(), spec.kind, *(shlex.quote(o) for o in spec.overrides), *extra]
    container = launcher.get("container")
    if container:
        binds = [str(spec.run_dir), str(spec.workdir), *(str(b) for b in launcher.get("container_binds") or [])]
        bind = ",".join(dict.fromkeys(binds))  # keep order, drop repeats
        words = ["apptainer", "exec", "--nv", "--bind", shlex.quote(bind), shlex.quote(str(container)), *words]
    return " ".join(words)


def render(launcher: Mapping[str, Any], spec: JobSpec, templates_dir: Path | None = None) -> str:
    """The sbatch script text for ``spec`` under ``launcher``.

    Raises
    ------
    LauncherConfigError
        A launcher value Slurm would reject, or an unknown job kind.
    jinja2.TemplateNotFound
        ``templates_dir`` lacks the template.
    """
    if spec.kind not in TEMPLATES:
        raise LauncherConfigError(f"unknown job kind '{spec.kind}': expected one of {', '.join(JOB_KINDS)}")
    _check(launcher)
    root = Path(templates_dir or launcher.get("templates_dir") or default_templates_dir())
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    extra_args: list[str] = []
    if spec.kind == "infer":
        # Shards are explicit (not Slurm's count/min) so re-submitting some indices keeps the same split.
        n = int(launcher.get("array_tasks") or 1)
        extra_args = ["shard.index=${SLURM_ARRAY_TASK_ID}", f"shard.count={n}", "shard.offset=0"]
    elif spec.kind == "ingest" and not any(o.startswith("workers=") for o in spec.overrides):
        extra_args = ['"workers=${SLURM_CPUS_PER_TASK:-1}"']  # one worker process per allocated CPU
    ctx = {
        **{k: launcher.get(k) for k in launcher},
        "job": spec,
        "q": shlex.quote,
        "tasks_per_node": tasks_per_node(launcher),
        "array": array_spec(launcher) if spec.kind == "infer" else None,
        "command": job_command(launcher, spec, *extra_args),
        "exit_preempted": EXIT_PREEMPTED,
        "env": dict(launcher.get("env") or {}),
        "secret_files": dict(launcher.get("secret_files") or {}),
        "env_setup": list(launcher.get("env_setup") or []),
        "extra_sbatch": list(launcher.get("extra_sbatch") or []),
        **spec.extra_context,
    }
    return env.get_template(TEMPLATES[spec.kind]).render(**ctx)
