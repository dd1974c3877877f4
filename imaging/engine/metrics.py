"""Validation metrics that reduce correctly across ranks with uneven shards.

Each rank accumulates per-label *sums* and *counts* over its own cases; one
``all_reduce`` of those tensors gives the global mean. No padded sampler, so no
case is counted twice and no rank waits for a case that does not exist.
Classification gathers (score, label) pairs and computes AUC once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, ROCAUCMetric

from imaging.engine.distributed import Dist, all_reduce_sum, gather_objects

Spacing = tuple[float, float, float]


def voxel_spacing(image: Any) -> list[Spacing]:
    """Per-case voxel size (mm) of a batched ``(B, C, *spatial)`` MetaTensor, from its affine.

    The validation grid is the *resampled* one (``Spacingd``): distances on it must use its
    spacing, not the source's. A plain tensor (no affine) gives 1 mm, i.e. voxels.
    """
    batch = int(image.shape[0]) if hasattr(image, "shape") and len(image.shape) > 0 else 1
    affine = getattr(image, "affine", None)
    if affine is None:
        return [(1.0, 1.0, 1.0)] * batch
    a = torch.as_tensor(affine).double()
    a = a.unsqueeze(0) if a.ndim == 2 else a
    cols = torch.linalg.norm(a[:, :3, :3], dim=1)  # (B, 3): length of each voxel axis in world space
    out = [(float(c[0]), float(c[1]), float(c[2])) for c in cols]
    return out if len(out) == batch else out[:1] * batch


def miss_penalty_mm(shape: Sequence[int], spacing: Spacing) -> float:
    """The HD95 counted for an organ the prediction misses entirely: the grid's diagonal in mm.

    MONAI reports NaN there (no surface to measure from); dropping those cases would make a model
    that misses an organ look *better*. The diagonal is the largest distance two voxels of the
    grid can have, so a miss never scores better than any hit (the penalty nnU-Net/MONAI users
    commonly pick; ``missed_<label>`` counts them so the mean can be read).
    """
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def _present(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, num_classes - 1)`` bool: which foreground labels occur in each case (no one-hot copy)."""
    flat = labels.reshape(labels.shape[0], -1)
    return torch.stack([(flat == c).any(1) for c in range(1, num_classes)], 1)


@dataclass
class SegMetricAccumulator:
    """Per-label Dice (and HD95 in mm) sums and counts over cases; background excluded.

    A label absent from a case's ground truth is skipped for that case (MONAI
    returns NaN there), not counted as 0 or 1. A label present in the ground truth
    but absent from the prediction is a *miss*: counted in ``missed_<label>`` and,
    for HD95, given :func:`miss_penalty_mm`.
    """

    num_classes: int
    hd95: bool = False
    dice_sum: torch.Tensor = field(init=False)
    dice_count: torch.Tensor = field(init=False)
    hd_sum: torch.Tensor = field(init=False)
    hd_count: torch.Tensor = field(init=False)
    missed: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n = self.num_classes - 1
        self.dice_sum, self.dice_count, self.hd_sum, self.hd_count, self.missed = (
            torch.zeros(n, dtype=torch.float64) for _ in range(5))
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True,
                                num_classes=self.num_classes)
        self._hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    def add(self, pred_labels: torch.Tensor, target: torch.Tensor,
            spacing: Sequence[Spacing] | None = None) -> torch.Tensor:
        """Add a batch: ``pred_labels`` and ``target`` are label maps ``(B, 1, *spatial)``.

        Args:
            spacing: per case, the voxel size (mm) of the grid these maps lie on
                (:func:`voxel_spacing`); None: 1 mm (distances in voxels).

        Returns:
            Per-case Dice ``(B, num_classes - 1)`` (NaN where the label is absent).
        """
        pred, tgt = pred_labels.cpu(), target.cpu()
        dice = torch.as_tensor(self._dice(y_pred=pred, y=tgt)).double()
        self._dice.reset()
        ok = ~torch.isnan(dice)
        self.dice_sum += torch.where(ok, dice, 0.0).sum(0)
        self.dice_count += ok.sum(0)
        in_truth, in_pred = _present(tgt, self.num_classes), _present(pred, self.num_classes)
        miss = in_truth & ~in_pred
        self.missed += miss.sum(0)
        if self.hd95:
            self._add_hd95(pred, tgt, in_truth, miss, list(spacing or [(1.0, 1.0, 1.0)] * int(pred.shape[0])))
        return dice

    def _add_hd95(self, pred: torch.Tensor, tgt: torch.Tensor, in_truth: torch.Tensor, miss: torch.Tensor,
                  spacing: list[Spacing]) -> None:
        onehot_p = torch.nn.functional.one_hot(pred[:, 0].long(), self.num_classes).movedim(-1, 1)
        onehot_t = torch.nn.functional.one_hot(tgt[:, 0].long(), self.num_classes).movedim(-1, 1)
        with warnings.catch_warnings():
            # MONAI warns on every empty prediction/label ("... is all 0"): those are the misses
            # and absences handled below, once per case and label, so no log spam per epoch.
            warnings.filterwarnings("ignore", message=".* is all 0")
            hd = torch.as_tensor(self._hd(y_pred=onehot_p, y=onehot_t,
                                          spacing=[list(s) for s in spacing])).double()
        self._hd.reset()
        penalty = torch.tensor([miss_penalty_mm(tuple(pred.shape[2:]), s) for s in spacing], dtype=torch.float64)
        hd = torch.where(miss, penalty[:, None], hd)
        counted = in_truth & torch.isfinite(hd)
        self.hd_sum += torch.where(counted, hd, 0.0).sum(0)
        self.hd_count += counted.sum(0)

    def reduce(self, d: Dist, names: dict[int, str]) -> dict[str, float]:
        """Global means over every rank's cases: ``dice_<name>``, ``dice_mean``, ``missed_<name>``
        (cases whose organ the prediction lacks), and with HD95 ``hd95_<name>``, ``hd95_mean`` (mm)."""
        packed = torch.stack([self.dice_sum, self.dice_count, self.hd_sum, self.hd_count, self.missed])
        total = all_reduce_sum(packed, d).cpu()
        out: dict[str, float] = {}
        means, hds = [], []
        for i in range(self.num_classes - 1):
            name = names.get(i + 1, str(i + 1))
            if total[1, i] > 0:
                out[f"dice_{name}"] = float(total[0, i] / total[1, i])
                means.append(out[f"dice_{name}"])
                out[f"missed_{name}"] = float(total[4, i])
            if self.hd95 and total[3, i] > 0:
                out[f"hd95_{name}"] = float(total[2, i] / total[3, i])
                hds.append(out[f"hd95_{name}"])
        out["dice_mean"] = sum(means) / len(means) if means else math.nan
        if self.hd95:
            out["hd95_mean"] = sum(hds) / len(hds) if hds else math.nan
        out["n_cases_with_labels"] = float(total[1].max()) if total.numel() else 0.0
        return out


@dataclass
class ClsMetricAccumulator:
    """Scores and labels of this rank's cases; AUC and accuracy over all ranks."""

    num_classes: int
    scores: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.scores += torch.softmax(logits.float(), dim=1).cpu().tolist()
        self.labels += [int(v) for v in target.view(-1).cpu().tolist()]

    def reduce(self, d: Dist) -> dict[str, float]:
        parts = gather_objects((self.scores, self.labels), d)
        scores = [s for part in parts for s in part[0]]  # type: ignore[index]
        labels = [lab for part in parts for lab in part[1]]  # type: ignore[index]
        if not labels:
            return {"auc": math.nan, "accuracy": math.nan}
        y_pred = torch.tensor(scores)
        y = torch.nn.functional.one_hot(torch.tensor(labels), self.num_classes)
        metric = ROCAUCMetric(average="macro")
        metric(y_pred=y_pred, y=y)
        try:
            auc = float(metric.aggregate())  # type: ignore[arg-type]
        except (ValueError, AssertionError):
            auc = math.nan  # one class only in the validation set
        acc = float((y_pred.argmax(1) == torch.tensor(labels)).double().mean())
        return {"auc": auc, "accuracy": acc}
