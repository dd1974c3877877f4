"""Review images: prediction vs label in three planes, as PNG for MLflow.

One figure per case: row 1 the reference label, row 2 the prediction, each over
the image in axial, coronal and sagittal planes through the centre of the
labelled region, with axes in millimetres (RAS). Titles carry the series key
only (a keyed hash), never identifying data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from imaging.fsutil import atomic_path  # noqa: E402
from imaging.palette import label_cmap  # noqa: E402
from imaging.records import ReviewCase  # noqa: E402


def _centre(label: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(label > 0)
    if idx.size == 0:
        return tuple(s // 2 for s in label.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in idx.mean(0).round())  # type: ignore[return-value]


def _planes(vol: np.ndarray, c: tuple[int, int, int]) -> list[np.ndarray]:
    # Each plane transposed so the first listed axis runs horizontally (imshow rows = vertical).
    return [vol[:, :, c[2]].T, vol[:, c[1], :].T, vol[c[0], :, :].T]


# Radiological convention, as in the inference overlays and the notebooks: the
# patient's right on the viewer's left, so the x (toward R) axis runs right-to-left.
PLANES = [("axial", "x: R (mm), patient right on the left", "y: A (mm)", (0, 1)),
          ("coronal", "x: R (mm), patient right on the left", "z: S (mm)", (0, 2)),
          ("sagittal", "y: A (mm)", "z: S (mm)", (1, 2))]


def render_case(case: ReviewCase, names: dict[int, str], path: Path, dice: dict[str, float] | None = None) -> Path:
    """Write the review PNG of ``case`` to ``path`` (atomically)."""
    n_classes = max(len(names), int(max(case.label.max(), case.pred.max())) + 1)
    cmap = label_cmap(n_classes - 1)
    c = _centre(case.label)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    for row, (title, mask) in enumerate((("label", case.label), ("prediction", case.pred))):
        for col, (plane, xlab, ylab, (ax0, ax1)) in enumerate(PLANES):
            ax = axes[row, col]
            extent = (0, case.image.shape[ax0] * case.spacing[ax0], 0, case.image.shape[ax1] * case.spacing[ax1])
            img = _planes(case.image, c)[col]
            msk = _planes(mask, c)[col]
            ax.imshow(img, cmap="gray", origin="lower", extent=extent, interpolation="nearest")
            ax.imshow(np.ma.masked_equal(msk, 0), cmap=cmap, vmin=0, vmax=n_classes - 1, alpha=0.45,
                      origin="lower", extent=extent, interpolation="nearest")
            if ax0 == 0:
                ax.invert_xaxis()
            ax.set_title(f"{title}: {plane}")
            ax.set_xlabel(xlab)
            ax.set_ylabel(ylab)
    legend = ", ".join(f"{k}={v}" for k, v in sorted(names.items()) if k)
    scores = "  ".join(f"{k}={v:.3f}" for k, v in (dice or {}).items())
    fig.suptitle(f"series {case.series_key[:16]}  [{legend}]  {scores}")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def case_dice(case: ReviewCase, names: dict[int, str]) -> dict[str, float]:
    """Dice per label of one case (labels present in the reference only)."""
    out = {}
    for value, name in names.items():
        if value == 0:
            continue
        ref, pred = case.label == value, case.pred == value
        if ref.any():
            out[name] = float(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))
    return out
