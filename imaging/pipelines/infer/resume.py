"""Resume markers and the reports derived from them (one shard's or the merged one).

Done markers hold the model version and a hash of the options that change the
outputs (``ModelInfo.options_key``): other options, other outputs. Before a series is
read, ``attempted/<series_key>.json`` counts the start; a finished series (ok or
error) removes it, so a count that survives means the process died on it. After
two deaths the series is skipped with an error row instead of killing a third process.

A series that fails at any stage gets ``errors/<series_key>.json`` with its
reason and the batch goes on. Report rows live in those markers, so reports are
*derived*: the shard report and the merged ``report.csv`` are rebuilt from the
markers, which is why a re-run after a kill never duplicates a row.

Merging: every shard, when it finishes, takes ``.report.lock`` and rewrites the
merged ``report.csv``/``report.json`` from all markers, so the last shard to
finish writes the complete report; ``merge_only=true`` does only that step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaging.fsutil import atomic_write_json
from imaging.pipelines.infer.report import ReportRow, write_report

log = logging.getLogger(__name__)
OUTPUT_FILES = ("seg.nii.gz",)  # always written for an ok series; seg.dcm/overlay.png when produced


@dataclass
class ModelInfo:
    """Which model ran (goes into every row and marker)."""

    name: str
    version: str
    alias: str = ""
    labels: dict[int, str] = field(default_factory=dict)
    # Hash of every setting that changes the outputs (inference options, seg type/geometry/
    # identity...): a done marker made with other settings is not done for these.
    options_key: str = ""


def marker_path(out: Path, kind: str, key: str) -> Path:
    """``OUT/<kind>/<series_key>.json``: kind is done, errors or attempted."""
    return out / kind / f"{key}.json"


def is_done(out: Path, key: str, model: ModelInfo) -> bool:
    """A series is done when its marker exists for this model and its outputs are still there."""
    path = marker_path(out, "done", key)
    if not path.is_file():
        return False
    marker = json.loads(path.read_text(encoding="utf-8"))
    same_model = (marker.get("model_name"), str(marker.get("model_version"))) == (model.name, str(model.version))
    same_options = str(marker.get("options_key", "")) == model.options_key
    files_there = all((out / key / f).is_file() for f in marker.get("files", OUTPUT_FILES))
    if not same_model:
        log.info("%s: done with another model version, predicting again", key)
    elif not same_options:
        log.info("%s: done with other inference options, predicting again", key)
    return same_model and same_options and files_there


def options_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that change a series' outputs."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MAX_ATTEMPTS = 2


def attempts(out: Path, key: str) -> int:
    """How many processes started on this series and did not finish it (0: none, or unreadable)."""
    path = marker_path(out, "attempted", key)
    try:
        return int(json.loads(path.read_text(encoding="utf-8")).get("attempts", 0))
    except (OSError, ValueError):
        return 0


def count_attempt(out: Path, key: str) -> None:
    """Count a start on this series *before* the work: a process that dies on it leaves the count."""
    atomic_write_json(marker_path(out, "attempted", key), {"attempts": attempts(out, key) + 1}, fsync=False)


def record(out: Path, row: ReportRow, files: list[str] | None = None, options: str = "") -> None:
    """Write the row into its marker: done/ for ok (last, after the outputs), errors/ otherwise."""
    if row.status == "ok":
        atomic_write_json(marker_path(out, "done", row.series_key), {**row.to_json(), "files": files or [],
                                                                      "options_key": options})
        marker_path(out, "errors", row.series_key).unlink(missing_ok=True)
    else:
        atomic_write_json(marker_path(out, "errors", row.series_key), row.to_json())
    marker_path(out, "attempted", row.series_key).unlink(missing_ok=True)  # finished, for better or worse


def report_rows(out: Path, keys: list[str]) -> Iterator[ReportRow]:
    """The rows of these series, from their done/ or errors/ marker (a series without either has none)."""
    for key in keys:
        for kind in ("done", "errors"):
            path = marker_path(out, kind, key)
            if path.is_file():
                yield ReportRow.from_json(json.loads(path.read_text(encoding="utf-8")))
                break


def merge_reports(out: Path, keys: list[str], model: ModelInfo) -> tuple[Path, bool]:
    """Rebuild ``report.csv``/``report.json`` from every marker, under a lock. Returns (path, complete)."""
    out.mkdir(parents=True, exist_ok=True)
    names = [n for v, n in sorted(model.labels.items()) if v != 0]
    with open(out / ".report.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialise: whoever merges last saw every marker
        rows = list(report_rows(out, keys))
        n_ok = sum(r.status == "ok" for r in rows)
        summary = {"n_series": len(keys), "n_reported": len(rows), "n_ok": n_ok, "n_error": len(rows) - n_ok,
                   "complete": len(rows) == len(keys), "model_name": model.name,
                   "model_version": str(model.version), "model_alias": model.alias}
        write_report(rows, out / "report.csv", names, out / "report.json", summary)
    return out / "report.csv", len(rows) == len(keys)


def drop_stale_marker_temps(out: Path, keys: set[str]) -> None:
    """Temp files a killed run left among the markers of *this shard's* series.

    Only ours: shards of an array share the marker folders and another live shard's
    temp file is about to be renamed.
    """
    for kind in ("done", "errors", "attempted"):
        folder = out / kind
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and ".tmp" in name and name[1:].split(".json.", 1)[0] in keys:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

