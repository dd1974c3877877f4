"""The dataset catalog: the contract between ingest and everything downstream.

``<dataset>/catalog.csv`` has one row per volume assembled from the export and
one row per input series that was skipped or failed (status ``skipped|error``
with the reason). Keys are keyed hashes (see :mod:`imaging.keys`),
paths are relative to the dataset folder. Nothing here is patient data.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from imaging.fsutil import atomic_open

CATALOG_NAME = "catalog.csv"
STATUSES = ("ok", "skipped", "error")


@dataclass
class CatalogRow:
    """One row of ``catalog.csv``.

    ``shape`` and ``spacing`` are 'x'-joined in NIfTI (i, j, k[, t]) order, e.g.
    ``512x512x300`` and ``0.7x0.7x2.5``; ``orientation`` is the NIfTI axis code
    (``RAS``, ``LPS``...). ``reason`` is empty for ok rows without remarks;
    for ok rows it may carry remarks such as ``gantry tilt 15.0 deg resampled``.
    ``label_layout`` says how ``label_path`` holds the labels: ``labelmap`` (3D, one
    dataset label value per voxel) or ``onehot`` (4D (x, y, z, C), channel c = label
    value c, channel 0 background: segments that overlap); empty without labels.
    """

    series_key: str
    subject_key: str
    study_key: str
    modality: str
    status: str
    reason: str = ""
    n_instances: int = 0
    shape: str = ""
    spacing: str = ""
    orientation: str = ""
    volume_path: str = ""
    label_path: str = ""
    series_number: str = ""
    sop_class: str = ""
    body_part: str = ""
    n_timepoints: int = 1
    tilt_deg: float = 0.0
    slice_spacing_uneven: bool = False
    label_layout: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"catalog status '{self.status}' is not one of {STATUSES}")


COLUMNS = [f.name for f in fields(CatalogRow)]
_TYPES = {f.name: f.type for f in fields(CatalogRow)}


def _parse(name: str, value: str) -> object:
    kind = _TYPES[name]
    if kind in ("int", int):
        return int(value) if value not in ("", None) else 0
    if kind in ("float", float):
        return float(value) if value not in ("", None) else 0.0
    if kind in ("bool", bool):
        return str(value).strip().lower() in ("1", "true", "yes")
    return value


def write_catalog(rows: Iterable[CatalogRow], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` atomically, sorted by (status, subject, series) for stable diffs."""
    out = Path(path)
    ordered = sorted(rows, key=lambda r: (r.status != "ok", r.subject_key, r.series_key, r.reason))
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in ordered:
            writer.writerow(asdict(row))
    return out


def read_catalog(path: str | os.PathLike[str]) -> list[CatalogRow]:
    """Read a catalog written by :func:`write_catalog` (a dataset folder or the CSV itself).

    Raises:
        FileNotFoundError: no catalog at ``path``.
        ValueError: a column is missing (names the file and the column).
    """
    p = Path(path)
    if p.is_dir():
        p = p / CATALOG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no dataset catalog at '{p}' (run `imaging ingest` first)")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("series_key", "subject_key", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"catalog '{p}' lacks column(s) {missing}")
        rows = []
        for raw in reader:
            kwargs = {k: _parse(k, v) for k, v in raw.items() if k in _TYPES}
            rows.append(CatalogRow(**kwargs))  # type: ignore[arg-type]
    return rows
