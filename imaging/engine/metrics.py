"""Validation metrics that reduce correctly across ranks with uneven shards.

Each rank accumulates per-label *sums* and *counts* over its own cases; one
``all_reduce`` of those tensors gives the global mean. No padded sampler, so no
case is counted twice and no rank waits for a case that does not exist.
Classification gathers (score, label) pairs and computes AUC once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, ROCAUCMetric

from imaging.engine.distributed import Dist, all_reduce_sum, gather_objects


@dataclass
class SegMetricAccumulator:
    """Per-label Dice (and HD95) sums and counts over cases; background excluded.

    A label absent from a case's ground truth is skipped for that case (MONAI
    returns NaN there), not counted as 0 or 1.
    """

    num_classes: int
    hd95: bool = False
    dice_sum: torch.Tensor = field(init=False)
    dice_count: torch.Tensor = field(init=False)
    hd_sum: torch.Tensor = field(init=False)
    hd_count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n = self.num_classes - 1
        self.dice_sum = torch.zeros(n, dtype=torch.float64)
        self.dice_count = torch.zeros(n, dtype=torch.float64)
        self.hd_sum = torch.zeros(n, dtype=torch.float64)
        self.hd_count = torch.zeros(n, dtype=torch.float64)
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True,
                                num_classes=self.num_classes)
        self._hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    def add(self, pred_labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch: ``pred_labels`` and ``target`` are label maps ``(B, 1, *spatial)``.

        Returns:
            Per-case Dice ``(B, num_classes - 1)`` (NaN where the label is absent).
        """
        dice = torch.as_tensor(self._dice(y_pred=pred_labels.cpu(), y=target.cpu())).double()
        self._dice.reset()
        ok = ~torch.isnan(dice)
        self.dice_sum += torch.where(ok, dice, 0.0).sum(0)
        self.dice_count += ok.sum(0)
        if self.hd95:
            onehot_p = torch.nn.functional.one_hot(pred_labels[:, 0].long().cpu(), self.num_classes)
            onehot_t = torch.nn.functional.one_hot(target[:, 0].long().cpu(), self.num_classes)
            hd = torch.as_tensor(self._hd(y_pred=onehot_p.movedim(-1, 1), y=onehot_t.movedim(-1, 1))).double()
            self._hd.reset()
            fine = torch.isfinite(hd)
            self.hd_sum += torch.where(fine, hd, 0.0).sum(0)
            self.hd_count += fine.sum(0)
        return dice

    def reduce(self, d: Dist, names: dict[int, str]) -> dict[str, float]:
        """Global means over every rank's cases: ``dice_<name>``, ``dice_mean`` (and ``hd95_<name>``)."""
        packed = torch.stack([self.dice_sum, self.dice_count, self.hd_sum, self.hd_count])
        total = all_reduce_sum(packed, d).cpu()
        out: dict[str, float] = {}
        means = []
        for i in range(self.num_classes - 1):
            name = names.get(i + 1, str(i + 1))
            if total[1, i] > 0:
                out[f"dice_{name}"] = float(total[0, i] / total[1, i])
                means.append(out[f"dice_{name}"])
            if self.hd95 and total[3, i] > 0:
                out[f"hd95_{name}"] = float(total[2, i] / total[3, i])
        out["dice_mean"] = sum(means) / len(means) if means else math.nan
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
