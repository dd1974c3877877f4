"""Inference report rows (report.csv / report.json) and the review overlay montage.

One row per series: keys only (no patient data), status ``ok|error`` with the
reason, voxel count and volume in mL per label (voxels x voxel volume / 1000,
on the source NIfTI grid), the model, the timings and the shard that did it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from imaging.fsutil import atomic_path, atomic_write_json, atomic_write_text

BASE_COLUMNS = [
    "series_key", "subject_key", "status", "reason", "model_name", "model_version", "model_alias",
    "shard", "t_load", "t_preprocess", "t_infer", "t_write", "seg_frames",
]


@dataclass
class ReportRow:
    """One series' line in the report."""

    series_key: str
    subject_key: str
    status: str  # ok | error
    reason: str = ""
    model_name: str = ""
    model_version: str = ""
    model_alias: str = ""
    shard: str = ""
    t_load: float = 0.0
    t_preprocess: float = 0.0
    t_infer: float = 0.0
    t_write: float = 0.0
    seg_frames: int = 0
    voxels: dict[str, int] = field(default_factory=dict)
    volume_ml: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ReportRow:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in known})


def label_volumes(labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str]) -> tuple[dict[str, int], dict[str, float]]:
    """Voxel count and volume in mL of every foreground label of the model (0 when absent)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(names, default=0) + 1)
    voxels = {name: int(counts[v]) if v < len(counts) else 0 for v, name in sorted(names.items()) if v != 0}
    return voxels, {name: round(n * voxel_ml, 4) for name, n in voxels.items()}


def columns(label_names: Sequence[str]) -> list[str]:
    return BASE_COLUMNS + [f"voxels_{n}" for n in label_names] + [f"volume_ml_{n}" for n in label_names]


def _flat(row: ReportRow, label_names: Sequence[str]) -> dict[str, Any]:
    out = {k: v for k, v in asdict(row).items() if k in BASE_COLUMNS}
    for n in label_names:
        out[f"voxels_{n}"] = row.voxels.get(n, "") if row.status == "ok" else ""
        out[f"volume_ml_{n}"] = row.volume_ml.get(n, "") if row.status == "ok" else ""
    return out


def write_report(rows: Iterable[ReportRow], csv_path: str | os.PathLike[str], label_names: Sequence[str],
                 json_path: str | os.PathLike[str] | None = None, summary: Mapping[str, Any] | None = None) -> int:
    """Write rows (sorted by series key) to CSV and optionally JSON, atomically. Returns the row count."""
    ordered = sorted(rows, key=lambda r: r.series_key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(label_names))
    writer.writeheader()
    for row in ordered:
        writer.writerow(_flat(row, label_names))
    atomic_write_text(csv_path, buf.getvalue())
    if json_path is not None:
        atomic_write_json(json_path, {"summary": dict(summary or {}), "rows": [r.to_json() for r in ordered]})
    return len(ordered)


def read_report(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _display_window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return window
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def overlay_montage(path: str | os.PathLike[str], image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                    names: Mapping[int, str], window: tuple[float, float] | None = None, n_slices: int = 6,
                    title: str = "") -> None:
    """A PNG of ``n_slices`` axial slices (radiological view) with the mask drawn over the image.

    The volume is first turned to RAS so the display does not depend on the source
    orientation; slices are spread over the mask's extent (over the whole volume when empty).
    """
    import nibabel as nib
    from matplotlib.figure import Figure  # no pyplot: safe off the main thread

    from imaging.palette import label_cmap

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(labels, ornt)
    zs = np.nonzero(lab.any(axis=(0, 1)))[0]
    lo_z, hi_z = (int(zs.min()), int(zs.max())) if len(zs) else (0, lab.shape[2] - 1)
    ks = np.unique(np.linspace(lo_z, hi_z, num=min(n_slices, hi_z - lo_z + 1)).round().astype(int))
    vmin, vmax = _display_window(img, window)
    n_lab = int(max(names, default=0)) + 1
    cmap = label_cmap(n_lab - 1)
    fig = Figure(figsize=(2.6 * len(ks), 3.0), dpi=90)
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        # RAS slice (x, y) -> rows = anterior up, columns = patient right on the left.
        ax.imshow(img[:, :, k].T[::-1, ::-1], cmap="gray", vmin=vmin, vmax=vmax)
        masked = np.ma.masked_equal(lab[:, :, k].T[::-1, ::-1], 0)
        ax.imshow(masked, cmap=cmap, vmin=0, vmax=max(n_lab - 1, 1), alpha=0.45, interpolation="nearest")
        ax.set_title(f"slice {k}", fontsize=8)
        ax.set_xlabel("R <-> L", fontsize=7)
        ax.set_ylabel("P <-> A", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    present = [names[v] for v in sorted(names) if v != 0 and (lab == v).any()]
    fig.suptitle(f"{title}  labels: {', '.join(present) or 'none'}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
