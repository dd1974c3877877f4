"""Dataset folder (``imaging ingest`` output) -> training items.

An *item* is the plain dict MONAI dictionary transforms consume:
``{"image": <abs path>, "label": <abs path or class index>, "series_key": ..., "subject_key": ...}``.
Only keys travel with an item (never patient identifiers), so items can be
logged, cached and saved as the split artifact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.dicom.catalog import CATALOG_NAME, CatalogRow, read_catalog
from imaging.layout import file_sha256

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"


@dataclass
class DatasetInfo:
    """What training needs to know about a dataset folder.

    ``labels`` maps the label value in ``labels/<key>.nii.gz`` to its name
    (background included), exactly as ``dataset.json`` has it.
    """

    root: Path
    rows: list[CatalogRow]
    labels: dict[int, str] = field(default_factory=dict)
    catalog_sha256: str = ""

    @property
    def ok_rows(self) -> list[CatalogRow]:
        return [r for r in self.rows if r.status == "ok"]


def load_dataset_info(dataset_dir: str | Path) -> DatasetInfo:
    """Read ``catalog.csv`` and ``dataset.json`` of a dataset folder.

    Raises:
        FileNotFoundError: the folder, its catalog or its ``dataset.json`` is missing.
        ValueError: ``dataset.json`` has no ``labels`` mapping or a non-integer label value.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder '{root}' does not exist")
    rows = read_catalog(root)
    labels: dict[int, str] = {}
    meta_path = root / DATASET_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"no '{DATASET_JSON}' in dataset folder '{root}' (run `imaging ingest` first)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    raw = meta.get("labels")
    if not isinstance(raw, dict):
        raise ValueError(f"'{meta_path}': key 'labels' must map label values to names, got {raw!r}")
    for value, name in raw.items():
        try:
            labels[int(value)] = str(name)
        except ValueError as exc:
            raise ValueError(f"'{meta_path}': label value {value!r} is not an integer") from exc
    return DatasetInfo(root=root, rows=rows, labels=labels, catalog_sha256=file_sha256(root / CATALOG_NAME))


def label_mapping(info: DatasetInfo, wanted: list[str] | None) -> tuple[dict[int, int], dict[int, str]]:
    """Map dataset label values to training class indices.

    Args:
        info: the dataset.
        wanted: label names to train on, in class order (class 1, 2, ...); ``None``
            takes every non-background label of ``dataset.json`` in value order.

    Returns:
        ``(orig_value -> class_index, class_index -> name)``, background is class 0.
        Labels not wanted map to background.

    Raises:
        ValueError: a wanted name is not in ``dataset.json`` (names the name and what exists).
    """
    by_name = {name: value for value, name in info.labels.items() if value != 0}
    names = list(wanted) if wanted is not None else [info.labels[v] for v in sorted(by_name.values())]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"data.labels: {missing} not in {info.root / DATASET_JSON} (it has {sorted(by_name)})"
        )
    mapping = {value: 0 for value in info.labels}
    for index, name in enumerate(names, start=1):
        mapping[by_name[name]] = index
    return mapping, {0: "background", **{i: n for i, n in enumerate(names, start=1)}}


def segmentation_items(info: DatasetInfo, modality: str | None) -> list[dict[str, Any]]:
    """Items for every ok row with a label map (and of ``modality`` when given).

    Rows whose labels are one-hot (``label_layout=onehot``: overlapping segments, 4D) are
    left out with a warning naming them: the transforms read a label map, and a 4D label
    read as one would train on channels as if they were classes.
    """
    items, onehot = [], []
    for row in info.ok_rows:
        if modality and row.modality.upper() != modality.upper():
            continue
        if not row.label_path or not row.volume_path:
            continue
        if row.label_layout not in ("", "labelmap"):
            onehot.append(row.series_key)
            continue
        items.append({
            "image": str(info.root / row.volume_path),
            "label": str(info.root / row.label_path),
            "series_key": row.series_key,
            "subject_key": row.subject_key,
        })
    if onehot:
        log.warning("%d series left out of segmentation training: their labels are one-hot (4D: overlapping "
                    "segments, label_layout in %s), not a label map: %s", len(onehot), CATALOG_NAME,
                    ", ".join(onehot))
    return items


def classification_items(
    info: DatasetInfo, modality: str | None, label_column: str, classes: list[str]
) -> list[dict[str, Any]]:
    """Items whose ``label_column`` value (a catalog column) is one of ``classes``.

    Raises:
        ValueError: ``label_column`` is not a catalog column.
    """
    if not info.rows or not hasattr(info.rows[0], label_column):
        raise ValueError(f"data.label_column: '{label_column}' is not a column of {info.root / CATALOG_NAME}")
    items = []
    for row in info.ok_rows:
        if modality and row.modality.upper() != modality.upper():
            continue
        value = str(getattr(row, label_column))
        if value not in classes or not row.volume_path:
            continue
        items.append({
            "image": str(info.root / row.volume_path),
            "label": classes.index(value),
            "series_key": row.series_key,
            "subject_key": row.subject_key,
        })
    return items
