"""Inference report rows (report.csv / report.json).

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

from imaging.fsutil import atomic_write_json, atomic_write_text

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
