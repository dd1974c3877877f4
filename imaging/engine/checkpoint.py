"""Checkpoints: everything a requeued job needs to continue exactly.

``<run_dir>/checkpoints/last.pt`` and ``best.pt`` hold model, optimizer, scaler
and scheduler state, RNG states (python, numpy, torch, cuda), epoch, step in
epoch, global step, best metric and the MLflow run id. They contain only
tensors and plain types and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaging.fsutil import atomic_path

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainState:
    """Loop position. ``epoch`` counts finished epochs; ``step_in_epoch`` > 0 means
    the checkpoint was taken mid-epoch (preemption) after that many batches."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = 0
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    # Stored as tensors and ints, so the checkpoint loads with weights_only=True.
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [*py_internal, -1 if py_gauss is None else py_gauss],
        "python_version": py_version,
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = list(state["python"])
    gauss = py.pop()
    random.setstate((state["python_version"], tuple(int(x) for x in py), None if gauss == -1 else gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, state: TrainState) -> Path:
    """Write a checkpoint atomically (a kill never leaves a torn file)."""
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "state": {
            "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
            "best_metric": state.best_metric, "best_epoch": state.best_epoch, "run_id": state.run_id or "",
            "extra": state.extra,
        },
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``: no code runs on load).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    return torch.load(path, map_location=map_location, weights_only=True)


def restore(payload: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
            scheduler: Any = None, scaler: Any = None, rng: bool = True) -> TrainState:
    """Load ``payload`` into the given objects and return the loop state."""
    unwrap(model).load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(payload["scaler"])
    if rng:
        set_rng_state(payload["rng"])
    s = payload["state"]
    return TrainState(epoch=int(s["epoch"]), step_in_epoch=int(s["step_in_epoch"]),
                      global_step=int(s["global_step"]), best_metric=float(s["best_metric"]),
                      best_epoch=int(s["best_epoch"]), run_id=s["run_id"] or None, extra=dict(s.get("extra", {})))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside a DDP wrapper."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, torch.nn.Module) else model
