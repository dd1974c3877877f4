"""Ground truth -> label map on a volume's grid: the label table, the canvas, NIfTI label files.

DICOM SEG ground truth is placed by :mod:`imaging.dicom.seg_labels` (its frames decoded by
:mod:`imaging.dicom.seg_decode`) onto the same :class:`LabelCanvas`.

Segment names (lowercased) map to label integers that are the same across the
whole dataset and are written to ``dataset.json`` as ``{"labels": {"0":
"background", "1": "liver", ...}}``. Integers already in an existing
``dataset.json`` keep their meaning on re-ingest; new names get the next ones.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom.geometry import Grid

log = logging.getLogger(__name__)

BACKGROUND = "background"
# Optional names of the integer values in NIfTI label files: {"1": "liver", ...}.
LABEL_NAMES_FILES = ("labels.json", "dataset.json")


class LabelError(ValueError):
    """Ground truth that cannot be put on the volume grid (names file and tag)."""


def normalise(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


class LabelTableFrozen(RuntimeError):
    """A frozen table (in a worker process) met a name it does not know."""


class LabelTable:
    """Name -> integer, stable across runs (existing integers kept, new names appended sorted)."""

    def __init__(self, existing: dict[str, str] | None = None) -> None:
        self.ids: dict[str, int] = {BACKGROUND: 0}
        self.frozen = False
        for key, name in sorted((existing or {}).items(), key=lambda kv: int(kv[0])):
            self.ids.setdefault(normalise(name), int(key))

    def _new(self, name: str) -> None:
        if self.frozen:
            raise LabelTableFrozen(name)
        self.ids[name] = max(self.ids.values()) + 1

    def add(self, names: list[str]) -> None:
        for name in sorted({normalise(n) for n in names} - set(self.ids)):
            self._new(name)

    def add_numbered(self, pairs: list[tuple[int, str]]) -> None:
        """Register names in the order of their source numbers (SEG segment numbers, NIfTI values),
        so a dataset labelled 1 liver, 2 spleen keeps those integers when nothing conflicts."""
        for _, name in sorted(pairs, key=lambda p: (p[0], normalise(p[1]))):
            if normalise(name) not in self.ids:
                self._new(normalise(name))

    def as_json(self) -> dict[str, str]:
        return {str(v): k for k, v in sorted(self.ids.items(), key=lambda kv: kv[1])}


def read_nifti_label_names(labels_dir: Path) -> dict[int, str]:
    """Names of NIfTI label values from ``labels.json`` (``{"1": "liver"}`` or ``{"labels": {...}}``)."""
    for name in LABEL_NAMES_FILES:
        p = labels_dir / name
        if p.is_file():
            try:
                obj = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("cannot read label names from '%s': %s", p.name, exc)
                continue
            table = obj.get("labels", obj) if isinstance(obj, dict) else {}
            out = {}
            for k, v in table.items():
                if str(k).isdigit() and isinstance(v, str):
                    out[int(k)] = v
                elif str(v).isdigit():  # {"liver": 1}
                    out[int(v)] = str(k)
            return out
    return {}


LABELMAP, ONEHOT = "labelmap", "onehot"


@dataclass
class Labels:
    """Ground truth on a volume grid.

    ``layout`` is ``labelmap`` (``data`` is (x, y, z), each voxel the dataset label value of
    its one segment) or ``onehot`` when segments overlap (``data`` is (x, y, z, C) uint8,
    channel c is label value c of ``dataset.json``, channel 0 the voxels of no segment).
    """

    data: np.ndarray
    layout: str

    def values(self) -> list[int]:
        if self.layout == ONEHOT:
            return [c for c in range(1, self.data.shape[3]) if self.data[..., c].any()]
        return [int(v) for v in np.unique(self.data) if v > 0]

    def mask(self, value: int) -> np.ndarray:
        if self.layout == ONEHOT:
            return self.data[..., value] > 0 if value < self.data.shape[3] else np.zeros(self.data.shape[:3], bool)
        return np.asarray(self.data == value)


class LabelCanvas:
    """Segments painted onto a grid: a label map until two labels claim one voxel, then one-hot.

    A label map cannot hold a voxel of two segments (segment 2 inside segment 1): flattening
    would silently drop voxels of one of them, so the first overlap turns the canvas one-hot.
    """

    def __init__(self, shape: tuple[int, int, int], table: LabelTable) -> None:
        self.shape = shape
        self.dtype = np.uint8 if max(table.ids.values()) < 256 else np.uint16
        self.labelmap: np.ndarray | None = np.zeros(shape, dtype=self.dtype)
        self.onehot: np.ndarray | None = None

    def paint(self, value: int, mask: np.ndarray, k: int | None = None) -> None:
        """Add ``mask`` (a (x, y) plane at slice ``k``, or the whole (x, y, z) grid) as label ``value``."""
        where = np.s_[:, :, k] if k is not None else np.s_[:, :, :]
        if self.labelmap is not None:
            target = self.labelmap[where]
            if not np.any(mask & (target != 0) & (target != value)):
                target[mask] = value
                return
            self._to_onehot()
        assert self.onehot is not None
        if value >= self.onehot.shape[3]:
            grow = np.zeros((*self.shape, value + 1 - self.onehot.shape[3]), np.uint8)
            self.onehot = np.concatenate([self.onehot, grow], axis=3)
        self.onehot[..., value][where][mask] = 1

    def _to_onehot(self) -> None:
        assert self.labelmap is not None
        lab, self.labelmap = self.labelmap, None
        self.onehot = np.zeros((*self.shape, int(lab.max()) + 1), np.uint8)
        for v in np.unique(lab):
            if v:
                self.onehot[..., int(v)] = lab == v

    def result(self) -> Labels:
        if self.labelmap is not None:
            return Labels(self.labelmap, LABELMAP)
        assert self.onehot is not None
        self.onehot[..., 0] = ~self.onehot[..., 1:].any(axis=3)
        return Labels(self.onehot, ONEHOT)


def nifti_to_labels(path: str | os.PathLike[str], grid: Grid, table: LabelTable, names: dict[int, str]) -> np.ndarray:
    """Resample a NIfTI label file by world coordinates (nearest) onto ``grid``.

    Raises:
        LabelError: the file is not a readable 3D NIfTI.
    """
    import nibabel as nib  # only when NIfTI ground truth exists

    try:
        img: Any = nib.load(str(path))
        src = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise LabelError(f"label file: unreadable NIfTI: {type(exc).__name__}") from exc
    if src.ndim == 4 and src.shape[3] == 1:
        src = src[..., 0]
    if src.ndim != 3:
        raise LabelError(f"label file: expected 3D labels, got shape {src.shape}")
    src = np.rint(src).astype(np.int64)
    values = sorted(int(v) for v in np.unique(src) if v > 0)
    table.add([names.get(v, f"label {v}") for v in values])
    lut = np.zeros(max(values, default=0) + 1, dtype=np.int64)
    for v in values:
        lut[v] = table.ids[normalise(names.get(v, f"label {v}"))]
    # Nearest neighbour by explicit rounding, one output slice at a time: scipy's
    # boundary handling drops voxels that land a rounding error past the last index.
    m = np.linalg.inv(img.affine) @ grid.affine_ras
    nx, ny, nz = grid.shape
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    res = np.zeros(grid.shape, dtype=np.int64)
    for k in range(nz):
        idx = np.rint(np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], axis=-1) @ m[:3].T).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=-1)
        res[..., k][ok] = src[idx[ok][:, 0], idx[ok][:, 1], idx[ok][:, 2]]
    dtype = np.uint8 if max(table.ids.values()) < 256 else np.uint16
    return lut[np.clip(res, 0, len(lut) - 1)].astype(dtype)
