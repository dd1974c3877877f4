"""HD95 in mm of the validation grid, and organs missed entirely counted, not dropped.

Oracle: MONAI's own ``HausdorffDistanceMetric(percentile=95)`` called with ``spacing=`` on
the same one-hot tensors, case by case; the miss penalty is the grid's diagonal computed
from the affine (a matrix product, not the code's per-axis formula); misses counted with NumPy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric

from imaging.engine.distributed import Dist, DistEnv
from imaging.engine.loops import validate
from imaging.engine.metrics import SegMetricAccumulator, voxel_spacing

NAMES = {0: "background", 1: "liver", 2: "spleen"}
SHAPE = (20, 16, 12)
AFFINE = np.array([[0.8, 0, 0, -10], [0, 1.5, 0, 4], [0, 0, 3.0, 2], [0, 0, 0, 1]])
CPU = Dist(env=DistEnv(), device=torch.device("cpu"))


def _cases() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cases (B=2): case 0 finds both organs (shifted/shrunk), case 1 misses the spleen."""
    truth = torch.zeros(2, 1, *SHAPE)
    pred = torch.zeros(2, 1, *SHAPE)
    truth[:, :, 3:10, 3:9, 2:7] = 1
    truth[:, :, 12:18, 8:14, 5:10] = 2
    pred[0, :, 4:11, 3:8, 2:6] = 1
    pred[0, :, 12:16, 9:14, 6:10] = 2
    pred[1, :, 3:10, 4:9, 3:7] = 1  # no spleen at all in case 1
    return pred, truth


def _onehot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), 3).movedim(-1, 1)


def _monai_hd95(pred: torch.Tensor, truth: torch.Tensor, spacing: list[float]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on the empty prediction; we handle it
        metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        return np.asarray(metric(y_pred=_onehot(pred), y=_onehot(truth), spacing=spacing), dtype=np.float64)


def _diagonal_mm() -> float:
    return float(np.linalg.norm(AFFINE[:3, :3] @ np.array(SHAPE, dtype=np.float64)))


def test_hd95_is_monais_with_spacing_and_misses_get_the_diagonal() -> None:
    pred, truth = _cases()
    spacing = [0.8, 1.5, 3.0]
    acc = SegMetricAccumulator(3, hd95=True)
    acc.add(pred, truth, [tuple(spacing)] * 2)  # type: ignore[list-item]
    out = acc.reduce(CPU, NAMES)

    ref = _monai_hd95(pred, truth, spacing)  # (2 cases, 2 labels)
    assert math.isnan(ref[1, 1])  # MONAI has no distance for the missed spleen: we must not drop it
    assert out["hd95_liver"] == pytest.approx((ref[0, 0] + ref[1, 0]) / 2, rel=1e-6)
    assert out["hd95_spleen"] == pytest.approx((ref[0, 1] + _diagonal_mm()) / 2, rel=1e-6)
    assert out["hd95_mean"] == pytest.approx((out["hd95_liver"] + out["hd95_spleen"]) / 2)
    # In voxels (the old behaviour) the figure would differ: the spacing really is applied.
    assert out["hd95_liver"] != pytest.approx((_monai_hd95(pred, truth, [1, 1, 1])[:, 0]).mean(), rel=1e-3)

    p, t = pred[:, 0].numpy(), truth[:, 0].numpy()
    for value, name in ((1, "liver"), (2, "spleen")):
        expected = sum(bool((t[b] == value).any()) and not bool((p[b] == value).any()) for b in range(2))
        assert out[f"missed_{name}"] == expected
    assert (out["missed_liver"], out["missed_spleen"]) == (0, 1)


def test_validate_reads_the_spacing_of_the_grid_from_the_affine() -> None:
    pred, truth = _cases()
    loader = [{"image": MetaTensor(torch.zeros(1, 1, *SHAPE), affine=torch.as_tensor(AFFINE)),
               "label": truth[b:b + 1]} for b in range(2)]
    cases = iter([0, 1])

    class Fixed(torch.nn.Module):  # "predicts" the prepared maps, one case per call
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _onehot(pred[next(cases):][:1]).float()

    out = validate(model=Fixed(), loader=loader, task="segmentation", num_classes=3, names=NAMES, d=CPU,
                   roi_size=list(SHAPE), sw_batch_size=1, hd95=True, progress=False)
    ref = _monai_hd95(pred, truth, [0.8, 1.5, 3.0])
    assert out["hd95_liver"] == pytest.approx(ref[:, 0].mean(), rel=1e-6)
    assert out["hd95_spleen"] == pytest.approx((ref[0, 1] + _diagonal_mm()) / 2, rel=1e-6)
    assert out["missed_spleen"] == 1.0


def test_voxel_spacing_of_a_batched_metatensor() -> None:
    a2 = AFFINE.copy()
    a2[:3, :3] = a2[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # permuted axes: spacing follows
    batch = MetaTensor(torch.zeros(2, 1, 4, 4, 4), affine=torch.as_tensor(np.stack([AFFINE, a2])))
    assert voxel_spacing(batch) == [pytest.approx((0.8, 1.5, 3.0)), pytest.approx((1.5, 0.8, 3.0))]
    assert voxel_spacing(torch.zeros(3, 1, 2, 2, 2)) == [(1.0, 1.0, 1.0)] * 3
