"""An ingested dataset for review: the catalog as tables, volumes in RAS, intensity samples.

Reads only what ``imaging ingest`` writes (``catalog.csv``, ``dataset.json``,
``volumes/``, ``labels/``); one volume at a time, so memory does not grow with
the dataset.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from imaging.data.nifti import load_nifti
from imaging.dicom.catalog import COLUMNS, read_catalog

# Reasons name the offending file and value; for a summary they are grouped without them.
# Today reasons name files by key (``file file-<hex>``); older catalogs by quoted path.
_FILE_PART = re.compile(r"(file '[^']*'|(label |source )?file file-[0-9a-f]+)( frame \d+)?:? ?")
_VALUE_PART = re.compile(r" = | length | of series |: resampled")


def load_catalog(dataset_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``catalog.csv`` as a DataFrame with the catalog's columns and types.

    Raises:
        FileNotFoundError: no catalog in ``dataset_dir``.
        ValueError: a required column is missing (names the file and the column).
    """
    rows = read_catalog(dataset_dir)
    return pd.DataFrame([r.__dict__ for r in rows], columns=COLUMNS)


def load_labels(dataset_dir: str | os.PathLike[str]) -> dict[int, str]:
    """``dataset.json``'s label map (value -> name, background included); empty when absent.

    Raises:
        ValueError: ``dataset.json`` exists but its ``labels`` is not a value -> name mapping.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8")).get("labels", {})
    if not isinstance(raw, dict):
        raise ValueError(f"'{path}': key 'labels' must map label values to names, got {raw!r}")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError as exc:
        raise ValueError(f"'{path}': a label value is not an integer: {list(raw)}") from exc


def status_counts(catalog: pd.DataFrame) -> pd.DataFrame:
    """Series per modality (rows) and status (columns: ok, skipped, error, total)."""
    modality = catalog["modality"].replace("", "(unknown)").fillna("(unknown)")
    table = pd.crosstab(modality, catalog["status"]).reindex(columns=["ok", "skipped", "error"], fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index.name = "modality"
    table.columns.name = None
    return table


def short_reason(reason: str) -> str:
    """A reason without the file name and the offending value, for grouping."""
    text = _FILE_PART.sub("", str(reason))
    return _VALUE_PART.split(text)[0].strip(" :")[:90] or "(no reason given)"


def not_ok(catalog: pd.DataFrame) -> pd.DataFrame:
    """Rows that did not become a volume: status, modality, short reason, series key."""
    bad = catalog[catalog["status"] != "ok"]
    out = pd.DataFrame({
        "status": bad["status"], "modality": bad["modality"], "sop_class": bad["sop_class"],
        "reason": bad["reason"].map(short_reason), "series_key": bad["series_key"].str[:16],
    })
    return out.sort_values(["status", "reason"]).reset_index(drop=True)


def reasons_summary(catalog: pd.DataFrame) -> pd.DataFrame:
    """Skipped/error series grouped by (status, short reason) with counts, most frequent first."""
    bad = not_ok(catalog)
    if bad.empty:
        return pd.DataFrame(columns=["status", "reason", "series"])
    grouped = bad.groupby(["status", "reason"]).size().rename("series").reset_index()
    return grouped.sort_values(["series", "status"], ascending=[False, True]).reset_index(drop=True)


def ok_remarks(catalog: pd.DataFrame) -> pd.DataFrame:
    """Ok rows that carry a remark (e.g. gantry tilt resampled): what ingest changed."""
    rem = catalog[(catalog["status"] == "ok") & (catalog["reason"] != "")]
    return pd.DataFrame({"modality": rem["modality"], "remark": rem["reason"].map(short_reason),
                         "series_key": rem["series_key"].str[:16]}).reset_index(drop=True)


@dataclass
class Volume:
    """One volume (and its label map) turned to the closest RAS orientation."""

    series_key: str
    modality: str
    image: np.ndarray  # float32, (x, y, z) RAS
    label: np.ndarray | None  # same grid, integers
    spacing: tuple[float, float, float]  # mm along x, y, z
    origin: tuple[float, float, float]  # mm, world position of voxel (0, 0, 0)


def _canonical(path: Path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(load_nifti(path))  # type: ignore[no-any-return]


def load_volume(dataset_dir: str | os.PathLike[str], row: pd.Series | dict[str, object],
                label_path: str | os.PathLike[str] | None = None) -> Volume:
    """Read a catalog row's volume (first time point of a 4D one) and label, in RAS.

    Args:
        dataset_dir: the dataset folder (catalog paths are relative to it).
        row: a catalog row (``series_key``, ``modality``, ``volume_path``, ``label_path``).
        label_path: a label map to use instead of the row's (e.g. a prediction).

    Raises:
        ValueError: the row has no volume (status not ok), or the label grid differs (names both files).
        FileNotFoundError: a listed file is missing.
    """
    root = Path(dataset_dir)
    if not row.get("volume_path"):
        raise ValueError(f"series {row.get('series_key')!r} has no volume (status {row.get('status')!r})")
    vol_path = root / str(row["volume_path"])
    if not vol_path.is_file():
        raise FileNotFoundError(f"volume '{vol_path}' listed in the catalog is missing")
    img = _canonical(vol_path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    lab_file = Path(label_path) if label_path else (root / str(row["label_path"]) if row.get("label_path") else None)
    label = None
    if lab_file is not None:
        lab_img = _canonical(lab_file)
        if lab_img.shape[:3] != data.shape or not np.allclose(lab_img.affine, img.affine, atol=1e-3):
            raise ValueError(f"label '{lab_file}' {lab_img.shape[:3]} is not on the grid of volume "
                             f"'{vol_path}' {data.shape}")
        label = np.asarray(lab_img.dataobj).astype(np.int16)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    origin = tuple(float(v) for v in img.affine[:3, 3])
    return Volume(str(row["series_key"]), str(row.get("modality", "")), data, label,
                  zooms, origin)  # type: ignore[arg-type]


def pick_volumes(catalog: pd.DataFrame, n: int = 3, *, with_labels: bool = True) -> pd.DataFrame:
    """Up to ``n`` ok rows, one modality after another (so CT and MR both show), labelled ones first."""
    ok = catalog[(catalog["status"] == "ok") & (catalog["volume_path"] != "")].copy()
    ok["_has_label"] = ok["label_path"] != ""
    if with_labels and ok["_has_label"].any():
        ok = ok.sort_values("_has_label", ascending=False, kind="stable")
    # Round robin over modalities, keeping the order inside each.
    ok["_rank"] = ok.groupby("modality").cumcount()
    return ok.sort_values(["_rank", "modality"], kind="stable").head(n).drop(columns=["_has_label", "_rank"])


def iter_volumes(dataset_dir: str | os.PathLike[str], catalog: pd.DataFrame,
                 max_per_modality: int = 6) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(modality, series_key, voxels)`` for up to ``max_per_modality`` ok volumes of each modality."""
    ok = catalog[(catalog["status"] == "ok") & (catalog["volume_path"] != "")]
    for modality, group in ok.groupby("modality", sort=True):
        for _, row in group.head(max_per_modality).iterrows():
            path = Path(dataset_dir) / str(row["volume_path"])
            data = np.asarray(load_nifti(path).dataobj, dtype=np.float32)
            yield str(modality), str(row["series_key"]), (data[..., 0] if data.ndim == 4 else data)
