"""After the batch: RTSTRUCT, plausibility flags and previews per selected series, and the study report.

``OUT/studies.csv`` (and ``studies.json``) has one row per study: the rule, the
series chosen, the series rejected with the names of the conditions/checks that
rejected them, the chosen series' inference status, its outputs and its
plausibility flags. Keys only: no description, no UID, no date.

Everything here is derived from files (``done/`` markers, ``<key>/seg.nii.gz``),
so every shard can call it after its batch and the last one writes the complete
report, as for ``report.csv``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imaging.boundary import failure_reason
from imaging.fsutil import atomic_write_json, atomic_write_text
from imaging.keys import Pseudonymizer
from imaging.layout import private_dir_of
from imaging.selection.qc import output_flags
from imaging.selection.select import Selection

log = logging.getLogger(__name__)

STUDY_COLUMNS = ["study_key", "subject_key", "rule", "status", "selected", "selected_status", "outputs", "flags",
                 "n_rejected", "rejected"]
RTSTRUCT_NAME = "rtstruct.dcm"


def _load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine)


def _fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def series_outputs(out: Path, key: str, *, names: Mapping[int, str], flags_cfg: Mapping[str, Any],
                   private: Path | None, rtstruct: bool, identity: str, pseudonymizer: Pseudonymizer | None,
                   model_name: str, model_version: str, deid_options: Any = None) -> None:
    """For one done series: ``flags.json`` and (``rtstruct``) ``rtstruct.dcm`` from ``seg.nii.gz``.

    The RTSTRUCT is built from the same NIfTI mask and the same private source headers
    as the SEG (:func:`imaging.dicom.source_frames.sample_labels` on every source frame). Idempotent:
    a file newer than the mask is kept.
    """
    folder = out / key
    mask_path = folder / "seg.nii.gz"
    if not mask_path.is_file():
        return
    labels: np.ndarray | None = None
    affine: np.ndarray | None = None
    if not _fresh(folder / "flags.json", mask_path):
        labels, affine = _load_mask(mask_path)
        atomic_write_json(folder / "flags.json", {"flags": output_flags(labels, affine, names, flags_cfg)})
    if not rtstruct or _fresh(folder / RTSTRUCT_NAME, mask_path):
        return
    src_json = private / "sources" / f"{key}.json" if private else None
    if src_json is None or not src_json.is_file():
        atomic_write_json(folder / "rtstruct.json", {"written": False, "reason": "no private sources index"})
        return
    from imaging.deid.seg_header import header_deid
    from imaging.dicom.rtstruct import write_rtstruct
    from imaging.dicom.source_frames import load_source

    if labels is None or affine is None:
        labels, affine = _load_mask(mask_path)
    try:
        result = write_rtstruct(folder / RTSTRUCT_NAME, load_source(src_json), labels, affine, names,
                                algorithm_name=model_name, algorithm_version=model_version,
                                pseudonymizer=pseudonymizer, identity=identity,
                                header_deid=header_deid(pseudonymizer, deid_options) if pseudonymizer else None)
    except Exception as exc:  # noqa: BLE001 - one series' RTSTRUCT never stops the others
        # The text names source paths: it goes to the private errors.jsonl, never the log or the report.
        reason = failure_reason(exc, stage="rtstruct", where=key, private_dir=private_dir_of(out, private))
        log.warning("%s: RTSTRUCT not written (%s)", key, type(exc).__name__)
        atomic_write_json(folder / "rtstruct.json", {"written": False, "reason": reason})
        return
    if result is None:
        (folder / RTSTRUCT_NAME).unlink(missing_ok=True)
    atomic_write_json(folder / "rtstruct.json", {"written": result is not None,
                                                 "n_contours": result.n_contours if result else 0})


def preview(out: Path, study_key: str, series_key: str, dataset: Path, volume_path: str,
            names: Mapping[int, str], window: tuple[float, float] | None) -> Path | None:
    """``OUT/previews/<study_key>.png``: the chosen series with its mask (a montage of axial slices)."""
    from imaging.review.overlay import overlay_montage

    mask_path = out / series_key / "seg.nii.gz"
    target = out / "previews" / f"{study_key}.png"
    if not mask_path.is_file() or _fresh(target, mask_path):
        return target if target.is_file() else None
    import nibabel as nib

    labels, affine = _load_mask(mask_path)
    image = np.asarray(nib.load(str(dataset / volume_path)).dataobj)  # type: ignore[attr-defined]
    image = image[..., 0] if image.ndim == 4 else image
    target.parent.mkdir(parents=True, exist_ok=True)
    overlay_montage(target, image, labels, affine, names, window, title=f"study {study_key}: {series_key}")
    return target


def _status(out: Path, key: str) -> str:
    if (out / "done" / f"{key}.json").is_file():
        return "ok"
    if (out / "errors" / f"{key}.json").is_file():
        reason = json.loads((out / "errors" / f"{key}.json").read_text(encoding="utf-8")).get("reason", "")
        return f"error: {reason}"[:200]
    return "pending"


def study_rows(out: Path, selection: Selection) -> list[dict[str, Any]]:
    """The study report's rows (see the module docstring)."""
    rows = []
    for s in selection.studies:
        outputs, flags, statuses = [], [], []
        for key in s.selected:
            statuses.append(f"{key}: {_status(out, key)}")
            have = [n for n in ("seg.nii.gz", "seg.dcm", RTSTRUCT_NAME) if (out / key / n).is_file()]
            outputs.append(f"{key}: {'+'.join(have) or '-'}")
            flag_file = out / key / "flags.json"
            if flag_file.is_file():
                flags += [f"{key}: {f}" for f in json.loads(flag_file.read_text(encoding="utf-8"))["flags"]]
        rows.append({
            "study_key": s.study_key, "subject_key": s.subject_key, "rule": s.rule, "status": s.status,
            "selected": ";".join(s.selected), "selected_status": " | ".join(statuses),
            "outputs": " | ".join(outputs), "flags": " | ".join(flags), "n_rejected": len(s.rejected),
            "rejected": " | ".join(r.text() for r in s.rejected),
        })
    return rows


def write_study_report(out: Path, selection: Selection) -> Path:
    """Write ``studies.csv`` / ``studies.json`` atomically under the report lock; returns the CSV path."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".report.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = study_rows(out, selection)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=STUDY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / "studies.csv", buf.getvalue())
        details = [{"study_key": s.study_key, "selected": s.selected,
                    "rejected": [{"series_key": r.series_key, "by": r.by, "reason": r.reason} for r in s.rejected]}
                   for s in selection.studies]
        atomic_write_json(out / "studies.json", {"rule": selection.rule.name, "per_study": selection.rule.per_study,
                                                  "rows": rows, "details": details})
    return out / "studies.csv"
