"""The plain PyTorch loops: one training epoch, one validation pass.

No framework: AMP on CUDA (float16 with a GradScaler or bfloat16; the forward
pass and loss under autocast, ``backward()`` outside it), gradient clipping,
gradient accumulation (``no_sync`` on the micro-steps of a DDP model), an LR
schedule stepped per optimizer step (not when the scaler skipped the step for
inf/NaN gradients), and a preemption poll after every step that all ranks agree
on. Each epoch reports its data-wait fraction and samples per second.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from imaging.data.datasets import TrainLoader
from imaging.engine.distributed import Dist, all_reduce_sum, any_rank
from imaging.engine.metrics import ClsMetricAccumulator, SegMetricAccumulator, voxel_spacing

log = logging.getLogger(__name__)


def lr_lambda(kind: str, warmup_steps: int, total_steps: int, min_factor: float = 0.0,
              power: float = 0.9) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup, then ``cosine``, ``poly`` or ``constant``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in ("cosine", "poly", "constant"):
        raise ValueError(f"trainer.scheduler.kind must be cosine|poly|constant, got '{kind}'")
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        if kind == "cosine":
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if kind == "poly":
            return min_factor + (1 - min_factor) * (1 - t) ** power
        return 1.0

    return factor


@dataclass
class EpochResult:
    loss: float
    steps: int           # batches run in this call
    optimizer_steps: int
    preempted: bool
    data_wait_fraction: float = math.nan  # time waiting for batches / wall time of the steps
    samples_per_s: float = math.nan       # patches trained per second on this rank
    skipped_steps: int = 0                # optimizer steps the GradScaler skipped (inf/NaN gradients)


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast(device: torch.device | str, amp: bool, amp_dtype: str = "float16") -> torch.autocast:
    """The one autocast of training, validation and inference: the configured dtype on every path.

    ``torch.autocast`` without ``dtype`` picks the device's default (float16 on CUDA): a model
    trained in bfloat16 would be validated and served in float16, where its activations can
    overflow. ``amp`` says whether to autocast at all (callers enable it on CUDA only).
    """
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[amp_dtype], enabled=amp)


def _seg_outputs(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    # Deep supervision (DynUNet in training mode) stacks the heads on dim 1: the loss
    # (monai DeepSupervisionLoss) takes them as a list, the main head first.
    return list(torch.unbind(out, 1)) if out.dim() == image.dim() + 1 else out


def train_one_epoch(
    *, model: torch.nn.Module, loader: TrainLoader, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, loss_fn: Callable[..., torch.Tensor], d: Dist, amp: bool,
    accumulate: int = 1, skip_batches: int = 0, should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[int], None] | None = None, max_steps: int | None = None, progress: bool = True,
    amp_dtype: str = "float16", grad_clip_norm: float | None = None,
) -> EpochResult:
    """Run one epoch (or its remainder after ``skip_batches``).

    ``skip_batches`` > 0 resumes a mid-epoch checkpoint: those batches are drawn
    (so every random stream advances exactly as before) but not trained on.
    ``should_stop`` is polled after each batch; its answer is agreed over ranks.
    """
    model.train()
    loader.start_epoch(epoch)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    steps = opt_steps = 0
    preempted = False
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = tqdm(total=total, initial=skip_batches, desc=f"epoch {epoch + 1}", leave=False,
               disable=not (progress and d.is_main))
    optimizer.zero_grad(set_to_none=True)
    wait = busy = 0.0
    samples = skipped = 0
    batches = iter(loader.loader)
    index = -1
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        index += 1
        if batch is None or (max_steps is not None and index >= max_steps):
            break
        if index < skip_batches:
            continue
        image = batch["image"].to(d.device, non_blocking=True)
        target = batch["label"].to(d.device, non_blocking=True)
        boundary = (index + 1) % accumulate == 0 or index + 1 == total
        no_sync = getattr(model, "no_sync", None)
        # DDP: skip the gradient all-reduce on accumulation micro-steps.
        sync = contextlib.nullcontext() if boundary or no_sync is None else no_sync()
        with sync:
            with autocast(d.device, amp, amp_dtype):
                loss = loss_fn(_seg_outputs(model(image), image), target)
            # backward() outside autocast: the backward ops run in the dtypes autocast chose forward.
            scaler.scale(loss / accumulate).backward()
        if boundary:
            if grad_clip_norm is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled() and scaler.get_scale() < scale:
                skipped += 1  # inf/NaN gradients: no optimizer step, so no schedule step either
            else:
                scheduler.step()
            opt_steps += 1
        loss_sum += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)  # (syncs: busy is real)
        wait += t1 - t0
        busy += time.perf_counter() - t1
        samples += int(image.shape[0])
        steps += 1
        bar.update(1)
        if on_step is not None:
            on_step(index + 1)
        # Stop only on an accumulation boundary, so no half-accumulated gradient is lost.
        if boundary and index + 1 < total and any_rank(should_stop(), d):
            preempted = True
            break
    bar.close()
    total_loss = all_reduce_sum(loss_sum, d).cpu()
    mean = float(total_loss[0] / total_loss[1]) if total_loss[1] > 0 else math.nan
    wall = wait + busy
    return EpochResult(loss=mean, steps=steps, optimizer_steps=opt_steps, preempted=preempted,
                       data_wait_fraction=wait / wall if wall > 0 else math.nan,
                       samples_per_s=samples / wall if wall > 0 else math.nan, skipped_steps=skipped)


@torch.no_grad()
def predict_volume(model: torch.nn.Module, image: torch.Tensor, roi_size: list[int], sw_batch_size: int,
                   overlap: float, amp: bool, amp_dtype: str = "float16") -> torch.Tensor:
    """Logits for a whole volume by sliding-window inference (autocast in ``amp_dtype`` when ``amp``)."""
    with autocast(image.device, amp, amp_dtype):
        out = sliding_window_inference(image, roi_size=roi_size, sw_batch_size=sw_batch_size, predictor=model,
                                       overlap=overlap, mode="gaussian")
    assert isinstance(out, torch.Tensor)
    return out


class ValidationInterrupted(RuntimeError):
    """A stop signal (preemption, time limit) arrived during validation; every rank agreed to stop."""


@torch.no_grad()
def validate(
    *, model: torch.nn.Module, loader: torch.utils.data.DataLoader, task: str, num_classes: int,
    names: dict[int, str], d: Dist, roi_size: list[int], sw_batch_size: int = 4, overlap: float = 0.25,
    amp: bool = False, hd95: bool = False, progress: bool = True, should_stop: Callable[[], bool] = lambda: False,
    amp_dtype: str = "float16",
) -> dict[str, float]:
    """Validate this rank's cases and reduce over all ranks (every rank gets the result).

    ``should_stop`` is polled before each case and again before its metrics (HD95 can take
    longer than the forward pass). It is polled locally (ranks may hold different numbers
    of cases, so no collective per case); the ranks agree once, after the loop.

    ``amp``/``amp_dtype`` are training's (``trainer.amp``, ``trainer.amp_dtype``): the epoch is
    judged in the precision it was trained in and will be served in.

    Raises
    ------
    ValidationInterrupted
        ``should_stop`` was true on some rank: nothing is reduced, the caller checkpoints.
    """
    model.eval()
    seg = SegMetricAccumulator(num_classes, hd95=hd95) if task == "segmentation" else None
    cls = ClsMetricAccumulator(num_classes) if task == "classification" else None
    stopped = False
    for batch in tqdm(loader, desc="validate", leave=False, disable=not (progress and d.is_main)):
        if should_stop():
            stopped = True
            break
        image = batch["image"].to(d.device)
        target = batch["label"]
        if seg is not None:
            logits = predict_volume(model, image, roi_size, sw_batch_size, overlap, amp, amp_dtype)
            if should_stop():
                stopped = True
                break
            # HD95 in mm of the grid the metric sees (the resampled one), not in voxels.
            seg.add(logits.argmax(1, keepdim=True), torch.as_tensor(target), voxel_spacing(batch["image"]))
        elif cls is not None:
            with autocast(d.device, amp, amp_dtype):
                logits = model(image)
            cls.add(logits, torch.as_tensor(target))
    if any_rank(stopped, d):
        raise ValidationInterrupted("validation stopped by a signal")
    if seg is not None:
        return seg.reduce(d, names)
    assert cls is not None
    return cls.reduce(d)
