"""Typed settings of the ``launcher`` group (``imaging/conf/launcher/``: local, slurm, site profiles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.settings.check import setting


@dataclass
class LauncherSettings:
    """``launcher.*``: where a job runs and the Slurm resources it asks for (``#SBATCH`` lines)."""

    name: str = setting("local", choices=("local", "slurm"))
    account: str | None = setting(None)
    partition: str | None = setting(None)
    qos: str | None = setting(None)
    time: str | int = setting("01:00:00")  # the form (D-HH:MM:SS ...) is launch.render's check
    nodes: int = setting(1, min=1)
    gpus_per_node: int = setting(0, min=0)
    tasks_per_node: int | None = setting(None, min=1)
    cpus_per_task: int = setting(2, min=1)
    mem: str | None = setting(None)
    constraint: str | None = setting(None)
    exclusive: bool = setting(False)
    job_name: str | None = setting(None)
    signal_lead_s: int = setting(300, min=0)
    max_requeues: int = setting(5, min=0)
    array_tasks: int = setting(4, min=1)
    array_throttle: int | None = setting(None, min=1)
    array_indices: str | int | None = setting(None)
    container: str | None = setting(None)
    container_binds: list[str] = setting(None)
    env_setup: list[str] = setting(None)
    env: dict[str, Any] = setting(None)
    secret_files: dict[str, Any] = setting(None)
    imaging_cmd: str = setting("imaging")
    extra_sbatch: list[str] = setting(None)
    mlflow_tracking_uri: str | None = setting(None)
    jobs_index_dir: str = setting("")
    templates_dir: str | None = setting(None)
    sbatch: str = setting("sbatch")
