"""De-identify a whole PACS export: walk, parse, de-identify, write opaque files.

Output layout: ``<output_dir>/<subject>/<study>/<series>/<sop>.dcm`` where every
part is a keyed pseudonym (nothing of the input's folder or file names survives),
plus ``<output_dir>/deid_audit.json`` (counts per attribute and withheld files by
opaque key and reason, never values). The link table (original -> pseudonym) is
written only when asked for, outside the output, owner-only.

Memory does not grow with the number of files: one file is in memory at a time,
and only per-series link-table keys and withheld records are kept.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from tqdm import tqdm

from imaging.deid.apply import DeidOptions, DeidStats, deidentify_dataset
from imaging.deid.plan import action_plan
from imaging.dicom.syntax import bare_transfer_syntax
from imaging.errors import UsageError
from imaging.fsutil import atomic_path, atomic_write_json
from imaging.keys import Pseudonymizer

log = logging.getLogger(__name__)

AUDIT_NAME = "deid_audit.json"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
LINK_KINDS = (
    ("PatientID", "patient_id"),
    ("AccessionNumber", "accession_number"),
    ("StudyInstanceUID", "study_instance_uid"),
    ("SeriesInstanceUID", "series_instance_uid"),
)
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class DeidConfigError(UsageError):
    """The export cannot run as configured (paths overlap, link table inside the output)."""


@dataclass
class DeidSummary:
    """What one run did (counts only; safe to print and log)."""

    files_seen: int = 0
    written: int = 0
    withheld: int = 0
    skipped_non_dicom: int = 0
    skipped_dicomdir: int = 0
    withheld_reasons: Counter[str] = field(default_factory=Counter)
    audit_path: Path | None = None
    link_table: Path | None = None


def _is_inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _iter_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` in a stable order, one directory listed at a time."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _sniff(path: Path) -> tuple[bool, bool]:
    """(has the DICM preamble, may be a bare dataset starting at group 0002/0008)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    magic = len(head) == 132 and head[128:] == b"DICM"
    return magic, head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def _check_pixels(ds: Dataset) -> str | None:
    """A reason when native pixel data is shorter than the header promises (truncated file)."""
    if "PixelData" not in ds or ds.file_meta.get("TransferSyntaxUID") not in _NATIVE_SYNTAXES:
        return None
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
        ) // 8
    except (AttributeError, TypeError, ValueError):
        return "image attributes (Rows/Columns/BitsAllocated) missing or invalid"
    got = len(ds.PixelData)
    return (
        None
        if got >= expected
        else f"PixelData holds {got} bytes, header needs {expected} (truncated)"
    )


class _Private:
    """Owner-only, hospital-side files: the link table and the withheld list with paths."""

    def __init__(self, link_table: Path | None):
        self.path = link_table
        self.seen: set[tuple[str, str]] = set()
        self._fh = self._tmp = None
        self._withheld_rows: list[tuple[str, str, str]] = []
        if link_table is not None:
            link_table.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = link_table.with_name(f".{link_table.name}.tmp")
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fh = os.fdopen(fd, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["kind", "original", "pseudonym"])

    def link(self, original: Dataset, result: Dataset) -> None:
        if self._fh is None:
            return
        for keyword, kind in LINK_KINDS:
            orig, new = str(original.get(keyword, "") or ""), str(result.get(keyword, "") or "")
            if orig and (kind, new) not in self.seen:
                self.seen.add((kind, new))
                self._writer.writerow([kind, orig, new])

    def withheld(self, rel: str, key: str, detail: str) -> None:
        if self._fh is not None:
            self._withheld_rows.append((rel, key, detail))

    def close(self) -> None:
        if self._fh is None or self.path is None or self._tmp is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        os.chmod(self.path, 0o600)
        if self._withheld_rows:
            out = self.path.with_name(self.path.stem + "_withheld.csv")
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["relative_path", "file_key", "detail"])
                writer.writerows(self._withheld_rows)


def _read(path: Path) -> tuple[Dataset | None, str]:
    """Parse one file: (dataset, '') or (None, 'non-dicom'|'dicomdir'|'unparseable: ...')."""
    magic, bare = _sniff(path)
    if not magic and not bare:
        return None, "non-dicom"  # README, thumbnails, archives: not parsed at all
    try:
        ds = pydicom.dcmread(path, force=not magic)
    except Exception as exc:  # pydicom raises many types on bad input
        return None, (f"unparseable: {type(exc).__name__}" if magic else "non-dicom")
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if meta.get("MediaStorageSOPClassUID") == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return None, "dicomdir"
    if not magic and ("SOPClassUID" not in ds or "SOPInstanceUID" not in ds):
        return None, "non-dicom"
    if not str(ds.get("SOPInstanceUID", "")).strip():
        return None, "unparseable: no SOPInstanceUID"
    if not meta.get("TransferSyntaxUID"):
        meta.TransferSyntaxUID = bare_transfer_syntax(ds)  # the same inference as ingest's scan
        ds.file_meta = meta
    return ds, ""


def deidentify_export(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    pseudonymizer: Pseudonymizer,
    options: DeidOptions | None = None,
    *,
    link_table: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DeidSummary:
    """Write a de-identified copy of every DICOM instance under ``input_dir``.

    Unparseable DICOM (and truncated pixel data) is withheld and reported, never
    copied; files that are not DICOM are skipped and counted; DICOMDIR files
    (they list patient names) are skipped.

    Raises:
        DeidConfigError: the output is inside the input (or the reverse), or the link
            table would land inside the output.
        FileNotFoundError: ``input_dir`` does not exist.
    """
    options = options or DeidOptions()
    action_plan(options)  # a bad override is a config error, not a per-file one
    src, dst = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"input_dir '{src}' is not a directory")
    if _is_inside(dst, src) or _is_inside(src, dst):
        raise DeidConfigError(
            f"output_dir '{dst}' and input_dir '{src}' must not contain each other"
        )
    links = Path(link_table).resolve() if link_table else None
    if links is not None and _is_inside(links, dst):
        raise DeidConfigError(
            f"link_table '{links}' is inside output_dir '{dst}': it must stay private"
        )
    _check_same_secret(dst / AUDIT_NAME, pseudonymizer)
    dst.mkdir(parents=True, exist_ok=True)
    summary, stats, private = DeidSummary(link_table=links), DeidStats(), _Private(links)
    withheld: list[dict[str, object]] = []
    try:
        for path in tqdm(_iter_files(src), unit="file", desc="deid", disable=not progress):
            summary.files_seen += 1
            rel = path.relative_to(src).as_posix()
            reason, detail = _one(path, dst, pseudonymizer, options, stats, private, summary)
            if reason:
                key = pseudonymizer.key(rel, "file")
                summary.withheld += 1
                summary.withheld_reasons[reason] += 1
                withheld.append({"index": summary.files_seen, "file_key": key, "reason": reason})
                private.withheld(rel, key, detail or reason)
                log.warning("withheld file #%d (key %s): %s", summary.files_seen, key, reason)
    finally:
        private.close()
    summary.audit_path = dst / AUDIT_NAME
    atomic_write_json(summary.audit_path, _audit(summary, stats, options, pseudonymizer, withheld))
    return summary


def _fingerprint(pseudo: Pseudonymizer) -> str:
    """A keyed value that tells two secrets apart and reveals nothing about them."""
    return pseudo.key("imaging-deid-output", "fingerprint")


def _check_same_secret(audit: Path, pseudo: Pseudonymizer) -> None:
    """Refuse to mix two secrets' pseudonyms in one output (re-runs with the same one are fine)."""
    if not audit.is_file():
        return
    try:
        previous = json.loads(audit.read_text(encoding="utf-8")).get("secret_fingerprint")
    except (OSError, ValueError):
        return
    if previous and previous != _fingerprint(pseudo):
        raise DeidConfigError(
            f"output_dir '{audit.parent}' was written with another project secret: "
            "use a new output_dir (pseudonyms of two secrets must not mix)"
        )


def _one(
    path: Path,
    dst: Path,
    pseudo: Pseudonymizer,
    options: DeidOptions,
    stats: DeidStats,
    private: _Private,
    summary: DeidSummary,
) -> tuple[str, str]:
    """Process one file; returns (withheld reason, private detail) or ('', '')."""
    ds, why = _read(path)
    if ds is None:
        if why == "non-dicom":
            summary.skipped_non_dicom += 1
            return "", ""
        if why == "dicomdir":
            summary.skipped_dicomdir += 1
            return "", ""
        return why, why
    if bad := _check_pixels(ds):
        return "unparseable: truncated or invalid pixel data", bad
    original = Dataset()
    for keyword, _kind in LINK_KINDS:
        if keyword in ds:
            setattr(original, keyword, ds.get(keyword))
    try:
        result = deidentify_dataset(ds, pseudo, options, stats)
    except ValueError as exc:  # names tag and VR, never the value
        return f"unparseable: {exc}", str(exc)
    except Exception as exc:  # lazy parsing of a damaged element surfaces here
        return f"unparseable: {type(exc).__name__}", repr(exc)
    if result is None:
        return stats.last_reason or "withheld", ""
    target = (
        dst
        / str(result.PatientID)
        / pseudo.key(str(original.get("StudyInstanceUID", "")), "study")
        / pseudo.key(str(original.get("SeriesInstanceUID", "")), "series")
        / f"{pseudo.key(str(result.SOPInstanceUID), 'sop')}.dcm"
    )
    # The 128-byte preamble is free for applications and exports put text there
    # (even patient names): it is never copied from the source.
    result.preamble = bytes(128)
    try:
        with atomic_path(target) as tmp:
            result.save_as(tmp, enforce_file_format=True)
    except Exception as exc:  # e.g. an unknown transfer syntax pydicom cannot encode
        return f"not writable: {type(exc).__name__}", repr(exc)
    private.link(original, result)
    summary.written += 1
    return "", ""


def _audit(
    summary: DeidSummary,
    stats: DeidStats,
    options: DeidOptions,
    pseudo: Pseudonymizer,
    withheld: list[dict[str, object]],
) -> dict[str, object]:
    return {
        "profile": "DICOM PS3.15 Annex E basic application level confidentiality profile",
        "options": sorted(o.value for o in options.enabled()),
        "allow_ultrasound": options.allow_ultrasound,
        "withhold": {
            "allow_rules": sorted(options.policy().allow_rules),
            "allow_modalities": sorted(options.policy().allow_modalities),
        },
        "keep_age_90_plus": options.keep_age_90_plus,
        "demo_key": pseudo.is_demo,
        "secret_fingerprint": _fingerprint(pseudo),
        "files": {
            "seen": summary.files_seen,
            "written": summary.written,
            "withheld": summary.withheld,
            "skipped_non_dicom": summary.skipped_non_dicom,
            "skipped_dicomdir": summary.skipped_dicomdir,
        },
        "withheld_reasons": dict(summary.withheld_reasons),
        "withheld": withheld,
        "attributes": stats.to_dict(),
        "link_table_written": summary.link_table is not None,
    }
