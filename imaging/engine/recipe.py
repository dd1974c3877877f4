"""Training-recipe pieces the loop uses: determinism, model wrapping, loss.

Kept out of the orchestrator so the knobs (``trainer.deterministic``,
``trainer.sync_batchnorm``, ``trainer.compile``, deep supervision) are read in
one place and tested on their own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch.nn.parallel import DistributedDataParallel

from imaging.engine.distributed import Dist

log = logging.getLogger(__name__)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (``warn_only``: an op without one warns, not fails) and no
    cuDNN autotuning; otherwise let cuDNN pick the fastest convolution per shape."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def wrap_model(network: torch.nn.Module, d: Dist, *, sync_batchnorm: bool = False,
               compile_model: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(network, model)``: the bare network (checkpoints, validation) and what the
    training step calls (SyncBatchNorm, DDP and ``torch.compile`` applied as asked)."""
    if sync_batchnorm and d.active:
        if d.device.type == "cuda":
            network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
        else:
            log.warning("trainer.sync_batchnorm needs CUDA devices: per-rank BatchNorm statistics on %s",
                        d.device.type)
    model: torch.nn.Module = network
    if d.active:
        model = DistributedDataParallel(network, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)  # type: ignore[assignment]
    return network, model


class ClassificationLoss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ce = torch.nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target.view(-1).long())


def build_loss(task: str, network_config: dict[str, Any]) -> torch.nn.Module:
    """Dice + CE for segmentation (over the deep-supervision heads, main head weighted
    most, when the network has them); cross-entropy for classification."""
    if task != "segmentation":
        return ClassificationLoss()
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    if network_config.get("deep_supervision"):
        return DeepSupervisionLoss(loss, weight_mode="exp")
    return loss
