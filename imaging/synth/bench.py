"""Benchmark inputs: one big CT series, or thousands of small MR files in many series.

Both write a normal export layout (``DICOM/...``) plus a ``manifest.json`` with the
same schema as :func:`imaging.synth.generate`, without DICOMDIR or labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaging.fsutil import atomic_write_json
from imaging.synth.build import MANIFEST, SCHEMA_VERSION, _prepare
from imaging.synth.canaries import CANARY_TOKEN
from imaging.synth.export import Export, grid_for, volume_series


def _manifest(export: Export, kind: str) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION, "generator": f"imaging.synth.{kind}", "seed": export.seed,
        "subjects": len({s["subject"] for s in export.series}), "size": export.size,
        "layout": export.layout, "cases": [], "labels": {}, "label_names": None, "dicomdir": None, "non_dicom_files": [],
        "series": export.series, "canary_token": CANARY_TOKEN, "canaries": export.all_canaries(),
        "uids": sorted(export.uids), "n_files": len(export.dicom_files),
    }
    atomic_write_json(export.root / MANIFEST, manifest)
    return manifest


def write_ct_series(
    out_dir: str | Path,
    shape: tuple[int, int, int] = (512, 512, 300),
    seed: int = 0,
    pixel: float | None = None,
    step: float = 1.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one CT series of ``shape`` = (rows, columns, slices) and return its manifest.

    Args:
        out_dir: export root (must be empty unless ``overwrite``).
        shape: raster rows, columns and the number of slices.
        seed: anatomy/noise/UID seed.
        pixel: pixel size in mm (default: a 380 mm field of view).
        step: slice spacing in mm.

    Raises:
        FileExistsError: ``out_dir`` not empty and not ``overwrite``.
    """
    root = Path(out_dir)
    _prepare(root, overwrite)
    export = Export(root, int(seed), "full", "nested")
    subject = export.subject(1)
    rows, cols, n = shape
    size = pixel if pixel is not None else 380.0 / max(rows, cols)
    grid = grid_for(export, subject, "CT", rows=rows, cols=cols, n_slices=n, pixel=size, step=step)
    volume_series(export, subject, "CT", "CT", "CT", f"CT ABDOMEN {step:.1f} BENCH", grid)
    return _manifest(export, "write_ct_series")


def write_many_small_series(
    out_dir: str | Path,
    n_files: int = 2000,
    files_per_series: int = 20,
    matrix: int = 64,
    series_per_subject: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write at least ``n_files`` small MR instances in series of ``files_per_series``.

    Subjects get ``series_per_subject`` series each (alternating T1/T2), as in an
    export of many short MR exams.

    Raises:
        FileExistsError: ``out_dir`` not empty and not ``overwrite``.
        ValueError: non-positive counts.
    """
    if n_files < 1 or files_per_series < 1 or series_per_subject < 1:
        raise ValueError(f"counts must be positive: n_files={n_files}, files_per_series={files_per_series}")
    root = Path(out_dir)
    _prepare(root, overwrite)
    export = Export(root, int(seed), "small", "nested")
    n_series = math.ceil(n_files / files_per_series)
    subject = None
    for s in tqdm(range(n_series), desc="small MR series"):
        if s % series_per_subject == 0:
            subject = export.subject(s // series_per_subject + 1)
        assert subject is not None
        contrast = "T1" if s % 2 == 0 else "T2"
        grid = grid_for(export, subject, "MR", rows=matrix, cols=matrix, n_slices=files_per_series,
                        pixel=360.0 / matrix, step=6.0)
        volume_series(export, subject, "MR", "MR", contrast, f"MR AX {contrast} {s + 1}", grid)
    return _manifest(export, "write_many_small_series")
