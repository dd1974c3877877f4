"""What a training run finds in its run directory: resume, refuse, or nothing to do.

- ``identity.json``: the config that defines the run (:mod:`imaging.plan.identity`);
  a run directory forced onto another config (``run_dir=...``) is refused with the
  differing keys named, never resumed.
- ``checkpoints/last.pt``: resumed when it exists (``trainer.resume=auto|must``)
  and was trained on the same catalog; another catalog starts a new run.
- ``finished.json``: written after the last epoch was tracked and registered; a
  run that finds it with nothing left to train is a no-op (registers nothing).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imaging.engine import checkpoint as ckpt
from imaging.fsutil import atomic_write_text
from imaging.plan.identity import differing_keys, identity_config
from imaging.plan.train import ConfigError, TrainPlan

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
FINISHED_FILE = "finished.json"


def check_identity(cfg: DictConfig, plan: TrainPlan) -> None:
    """Write ``identity.json`` on first use; refuse a run dir that holds another config.

    Raises:
        ConfigError: (key ``run_dir``) the run directory was made by a config that
            differs in the listed keys.
    """
    path = plan.run_dir / IDENTITY_FILE
    ident = identity_config(cfg)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config_hash") != plan.config_hash:
            keys = differing_keys(old.get("config", {}), ident)
            raise ConfigError("run_dir", f"'{plan.run_dir}' holds a run of another configuration (differs in "
                              f"{', '.join(keys[:12]) or 'unknown keys'}): leave run_dir at its default "
                              "(one directory per configuration) or trainer.resume=never")
        return
    atomic_write_text(path, json.dumps({"config_hash": plan.config_hash, "config": ident}, indent=1,
                                       sort_keys=True, default=str) + "\n")


def find_resume(cfg: DictConfig, plan: TrainPlan) -> dict[str, Any] | None:
    """The last checkpoint's payload to resume from, or ``None`` for a fresh start.

    Raises:
        FileNotFoundError: ``trainer.resume=must`` without a checkpoint.
    """
    last = plan.run_dir / "checkpoints" / ckpt.LAST
    mode = str(cfg.trainer.resume)
    if mode == "never":
        return None
    if last.is_file():
        payload = ckpt.load_checkpoint(last)
        extra = payload["state"].get("extra", {})
        trained_on = extra.get("catalog_sha256")
        if trained_on and trained_on != plan.dataset.catalog_sha256 and mode == "auto":
            # Same config, different data (e.g. a re-made demo dataset): this is not a
            # requeue of that run, so start a new one instead of continuing it.
            log.warning("checkpoint %s was trained on another dataset (catalog %s, now %s): starting a new run",
                        last, trained_on[:12], plan.dataset.catalog_sha256[:12])
            finished_path(plan).unlink(missing_ok=True)
            return None
        log.info("resuming from %s", last)
        return payload
    if mode == "must":
        raise FileNotFoundError(f"trainer.resume=must but there is no checkpoint at '{last}'")
    return None


def finished_path(plan: TrainPlan) -> Path:
    return plan.run_dir / FINISHED_FILE


def read_finished(plan: TrainPlan, payload: dict[str, Any] | None, max_epochs: int) -> dict[str, Any] | None:
    """The ``finished.json`` record when the run has nothing left to do, else ``None``."""
    if payload is None:
        return None
    s = payload["state"]
    if int(s["epoch"]) < max_epochs or int(s["step_in_epoch"]) > 0:
        return None  # more epochs asked for (max_epochs may grow on resume): train on
    path = finished_path(plan)
    if not path.is_file():
        return None  # trained but not (yet) tracked/registered: the finish step runs again
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if int(record.get("epochs_done", -1)) != int(s["epoch"]):
        return None
    return record


def write_finished(plan: TrainPlan, record: dict[str, Any]) -> None:
    atomic_write_text(finished_path(plan), json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
