"""The coordinator's config file, shared by ``imaging federate`` and the Slurm roles.

Light on purpose (OmegaConf only): the Slurm submit path on a login node imports it
without torch or Flower.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imaging.fsutil import atomic_write_text

SERVER_CONFIG = "federate.yaml"


def write_server_config(cfg: DictConfig, run_dir: Path) -> Path:
    """``<run_dir>/federate.yaml``, the ServerApp's config: resolved, without any site's folder."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    container["federation"]["datasets"] = {}
    path = run_dir / SERVER_CONFIG
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(container)))
    return path
