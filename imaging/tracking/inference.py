"""What an ``imaging infer`` run shows a reviewer: input dataset, review images, description.

Called by :func:`imaging.pipelines.infer.run.log_inference_run` inside the shard's
active MLflow run, after the report is written. It logs

- the shard's series as the run's dataset input (``context=inference``; same name
  and digest as the training run's input when the catalog is the same),
- the first overlay montages as ``review/<series_key>.png``,
- the description (tag ``mlflow.note.content``): the model version (linked) and
  its training run, the input, counts, a per-series table with each DICOM SEG's
  SeriesInstanceUID, the failures, and links to the review images.

Keys, UIDs of written SEGs and counts only: no input path, no patient identifier.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from imaging.dicom.catalog import CATALOG_NAME
from imaging.layout import file_sha256
from imaging.tracking.inputs import log_dataset_input
from imaging.tracking.summary import NOTE_TAG, inference_description

log = logging.getLogger(__name__)

MAX_REVIEW_IMAGES = 6


def catalog_sha256(dataset_dir: Path) -> str:
    """sha256 of ``catalog.csv`` (the hash training runs log as ``dataset.catalog_sha256``)."""
    return file_sha256(Path(dataset_dir) / CATALOG_NAME)


def seg_series_uid(path: Path) -> str:
    """The SeriesInstanceUID of a written DICOM SEG ('' when unreadable)."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                   .SeriesInstanceUID)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
        return ""


def log_inference_review(client: MlflowClient, run_id: str, shard_report: Path | None, dataset_dir: Path,
                         catalog: Iterable[Any], labels: dict[int, str]) -> str:
    """Log input, review images and description of the active inference run; returns the description.

    Raises:
        mlflow.exceptions.MlflowException: the store refused a write.
    """
    rows = _read_rows(shard_report) if shard_report is not None and shard_report.is_file() else []
    out = shard_report.parent if shard_report is not None else None
    modality = {str(c.series_key): str(c.modality) for c in catalog}
    sha = catalog_sha256(dataset_dir) if (dataset_dir / "catalog.csv").is_file() else ""
    names = [n for v, n in sorted(labels.items()) if v != 0]
    log_dataset_input([{"series_key": r["series_key"], "subject_key": r["subject_key"],
                        "modality": modality.get(r["series_key"], ""), "role": r["status"]} for r in rows],
                      sha, names, "inference", {"n_ok": sum(r["status"] == "ok" for r in rows),
                                                "n_error": sum(r["status"] == "error" for r in rows)})
    seg_uids: dict[str, str] = {}
    if out is not None:
        for row in rows:
            seg = out / row["series_key"] / "seg.dcm"
            if row["status"] == "ok" and seg.is_file():
                seg_uids[row["series_key"]] = seg_series_uid(seg)
        overlays = [out / r["series_key"] / "overlay.png" for r in rows if r["status"] == "ok"]
        overlays = [p for p in overlays if p.is_file()][:MAX_REVIEW_IMAGES]
        if overlays:
            with tempfile.TemporaryDirectory(prefix="imaging-review-") as tmp:
                for path in overlays:  # review/<series_key>.png: every overlay is called overlay.png
                    named = Path(tmp) / f"{path.parent.name}.png"
                    shutil.copyfile(path, named)
                    mlflow.log_artifact(str(named), "review")
    text = inference_description(run_id, client, rows, seg_uids, sha)
    client.set_tag(run_id, NOTE_TAG, text)
    return text


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The report's rows as written (plain CSV: tracking reads it without the engine's report module)."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
