"""PACS export -> dataset folder: scan, plan, assemble, label, catalog (one series at a time).

Output (see docs/architecture.md): ``volumes/<series_key>.nii.gz`` + ``.json``,
``labels/<series_key>.nii.gz``, ``catalog.csv``, ``dataset.json``. Private side
(never inside the dataset): ``index.sqlite``, ``links.csv`` (0600) and
``sources/<series_key>.json`` and ``names.jsonl`` (0600: key -> relative path of
every file a reason names). Keys come only from the :class:`Pseudonymizer`.
A series that fails becomes an ``error`` row naming file (by key), tag and value; the
rest of the export still ingests. A series the withholding policy of
:mod:`imaging.deid.withhold` refuses (burned-in text risk) is a ``skipped`` row whose
reason names the rule. Re-running skips volumes whose sources are
unchanged and rewrites the catalog.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaging.deid.withhold import WithholdPolicy
from imaging.dicom.catalog import CATALOG_NAME, CatalogRow, write_catalog
from imaging.dicom.index_row import IndexRow
from imaging.dicom.labels import LabelTable, read_nifti_label_names
from imaging.dicom.scan import ScanStats, decode_row, open_index, scan
from imaging.dicom.series import SEG_CLASSES
from imaging.fsutil import atomic_open, atomic_write_json, sync_filesystems
from imaging.keys import FileNames, Pseudonymizer, write_private_names
from imaging.layout import private_dir_of
from imaging.pipelines.ingest_series import BatchResult, SeriesContext, process_batch

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: 4D by real dimensions, bval/bvec, per-volume sidecars; 3: + exact stored values, padding policy
POLICIES = ("resample", "refuse")
UNEVEN_POLICIES = (*POLICIES, "keep")  # keep: one volume per run of regular spacing (geometry.native_runs)
NAMES_FILE = "names.jsonl"


@dataclass
class IngestSummary:
    """What one ingest did: status counts, catalog rows, where things are."""

    output_dir: Path
    private_dir: Path
    catalog_path: Path
    rows: list[CatalogRow]
    scan: ScanStats
    n_written: int = 0
    n_reused: int = 0
    label_errors: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.rows))

    @property
    def failed(self) -> bool:
        return self.counts.get("error", 0) > 0 or self.label_errors > 0

    def reasons(self) -> Counter[str]:
        """Non-ok rows grouped by reason without file names and values (e.g. 'missing (0020,0037) ...')."""
        out: Counter[str] = Counter()
        for r in self.rows:
            if r.status != "ok":
                text = re.sub(r"(file '[^']*'|(label |source )?file file-[0-9a-f]+)( frame \d+)?:? ?", "",
                              r.reason)
                text = re.split(r" = | length | of series |: resampled", text)[0].strip(" :")
                out[f"{r.status}: {text[:70]}"] += 1
        return out


# Series per task sent to a worker process; below MIN_SERIES_FOR_POOL a pool costs more than it saves.
SERIES_PER_TASK = 4
MIN_SERIES_FOR_POOL = 8


def ingest_options(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`ingest` from a composed ``imaging ingest`` or ``imaging infer``
    config: the shared ``ingest_options`` group (tilt, uneven, ...) and the withholding policy and
    age rule of ``deid_options``, so both commands ingest an export the same way."""
    from omegaconf import OmegaConf

    from imaging.deid.options import DeidOptions

    options = DeidOptions.from_mapping(OmegaConf.to_container(cfg.deid_options, resolve=True))  # type: ignore[arg-type]
    return {"tilt": str(cfg.tilt), "uneven": str(cfg.uneven), "split_4d": bool(cfg.split_4d),
            "philips_precise": bool(cfg.philips_precise),
            "keep_patient_characteristics": bool(cfg.keep_patient_characteristics),
            "withhold": options.policy(), "keep_age_90_plus": options.keep_age_90_plus}


def default_private_dir(output_dir: str | os.PathLike[str]) -> Path:
    return private_dir_of(Path(output_dir).resolve())


def ingest(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    pseudonymizer: Pseudonymizer,
    *,
    private_dir: str | os.PathLike[str] | None = None,
    workers: int = 2,
    tilt: str = "resample",
    uneven: str = "refuse",
    split_4d: bool = False,
    philips_precise: bool = False,
    labels_dir: str | os.PathLike[str] | None = None,
    keep_patient_characteristics: bool = False,
    withhold: WithholdPolicy | None = None,
    keep_age_90_plus: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Ingest a DICOM export into a de-identified dataset folder.

    Args:
        input_dir: the export's root folder.
        output_dir: the dataset folder (created).
        pseudonymizer: derives every key (subject, study, series).
        private_dir: index, links and sources (default ``<output_dir>.private``); never inside the dataset.
        workers: processes for the header scan and for assembling series.
        tilt: ``resample`` gantry-tilted stacks onto an orthogonal grid, or ``refuse`` them.
        uneven: ``refuse`` uneven/missing-slice stacks (default: error rows), or ``resample`` them
            onto a regular grid (interpolated slices, flagged in the catalog).
        split_4d: write each timepoint of a 4D series as its own volume.
        philips_precise: Philips precise floating-point values (private scale slope) instead of displayed ones.
        labels_dir: NIfTI ground truth named ``<SeriesInstanceUID>.nii.gz`` (default ``<input>/labels``).
        keep_patient_characteristics: copy PatientAge/PatientSex into sidecars.
        withhold: the burned-in text policy (``deid_options.withhold``; default: every rule on).
        keep_age_90_plus: keep sidecar ages of 90 and over (default: ``090Y``).
        progress: show progress bars.

    Returns:
        An :class:`IngestSummary`; failures are catalog rows, never exceptions.

    Raises:
        NotADirectoryError: ``input_dir`` is not a folder.
        ValueError: a bad option, or ``private_dir`` inside ``output_dir``.
    """
    for name, value, allowed in (("tilt", tilt, POLICIES), ("uneven", uneven, UNEVEN_POLICIES)):
        if value not in allowed:
            raise ValueError(f"{name}='{value}' is not one of {allowed}")
    src = Path(input_dir).resolve()
    if not src.is_dir():
        raise NotADirectoryError(f"input_dir '{input_dir}' is not a folder")
    out = Path(output_dir).resolve()
    private = Path(private_dir).resolve() if private_dir else default_private_dir(out)
    if private == out or out in private.parents:
        raise ValueError(f"private_dir '{private}' must not be inside the dataset '{out}' (it holds UIDs)")
    out.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True, mode=0o700)
    lab_dir = Path(labels_dir).resolve() if labels_dir else src / "labels"
    # pydicom logs warnings with absolute file paths (folders may carry names); problems reach
    # the catalog as rows naming files by key instead. Workers fork with this level.
    pydicom_log = logging.getLogger("pydicom")
    old_level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)
    try:
        return _ingest(src, out, private, lab_dir, pseudonymizer, workers, tilt, uneven, split_4d, philips_precise,
                       keep_patient_characteristics, withhold, keep_age_90_plus, progress)
    finally:
        pydicom_log.setLevel(old_level)


def _ingest(src: Path, out: Path, private: Path, lab_dir: Path, pseudonymizer: Pseudonymizer, workers: int,
            tilt: str, uneven: str, split_4d: bool, philips_precise: bool, keep_patient_characteristics: bool,
            withhold: WithholdPolicy | None, keep_age_90_plus: bool, progress: bool) -> IngestSummary:
    stats = scan(src, private / "index.sqlite", workers=workers, progress=progress,
                 skip_dirs=(lab_dir, out, private))
    con = open_index(private / "index.sqlite")
    existing = _read_json(out / "dataset.json").get("labels")
    ctx = SeriesContext(
        input_dir=src, output_dir=out, private_dir=private, ps=pseudonymizer,
        options={"tilt": tilt, "uneven": uneven, "split_4d": split_4d, "philips_precise": philips_precise,
                 "v": FORMAT_VERSION},
        labels_dir=lab_dir if lab_dir.is_dir() else None,
        label_names=read_nifti_label_names(lab_dir) if lab_dir.is_dir() else {},
        table=LabelTable(existing), segs=_seg_index(con), keep_patient_characteristics=keep_patient_characteristics,
        withhold=withhold or WithholdPolicy(), keep_age_90_plus=keep_age_90_plus,
    )
    # Every name known up front, so integers do not depend on the order series are met
    # (and worker processes, whose tables are frozen, rarely meet a new one).
    ctx.table.add_numbered([(int(n), name) for segs in ctx.segs.values() for seg in segs
                            for n, name in seg.get("segments") or []]
                           + list(ctx.label_names.items()) + _unnamed_label_values(ctx.labels_dir, ctx.label_names, ctx.ps))
    summary = IngestSummary(out, private, out / CATALOG_NAME, [], stats)
    names = FileNames(pseudonymizer, src)
    summary.rows.extend(_unreadable_rows(con, ctx, names))
    uids = [r[0] for r in con.execute(
        "SELECT DISTINCT series_uid FROM files WHERE kind='dicom' AND series_uid IS NOT NULL ORDER BY series_uid")]
    con.close()
    result = _run_series(uids, ctx, workers, progress)
    # Volumes and sources were written without a per-file fsync: one flush of their filesystems
    # before the files that refer to them.
    sync_filesystems(out, private)
    summary.rows.extend(result.rows)
    summary.n_written, summary.n_reused, summary.label_errors = result.n_written, result.n_reused, result.label_errors
    write_catalog(summary.rows, summary.catalog_path)
    summary.labels = ctx.table.as_json()
    atomic_write_json(out / "dataset.json", {
        "labels": summary.labels, "n_ok": summary.counts.get("ok", 0), "created_by": "imaging ingest",
        "format_version": FORMAT_VERSION, "demo_key": pseudonymizer.is_demo, "options": ctx.options,
    })
    _write_links(private / "links.csv", result.links)
    write_private_names(private / NAMES_FILE, {**names.found, **result.names})
    log.info("ingest: %s (%d written, %d unchanged)", summary.counts, summary.n_written, summary.n_reused)
    return summary


def _batches(uids: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(uids), n):
        yield uids[i:i + n]


def _run_series(uids: list[str], ctx: SeriesContext, workers: int, progress: bool) -> BatchResult:
    """Ingest every series, in worker processes when there are enough of them."""
    total = BatchResult()
    bar = tqdm(total=len(uids), desc="ingest", unit="series", disable=not progress, leave=False)
    try:
        if workers > 1 and len(uids) >= MIN_SERIES_FOR_POOL:
            ctx.table.frozen = True
            try:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    # At least ~4 tasks per worker: a few big series (4D, 1,000+ files) in batches of
                    # SERIES_PER_TASK would leave one worker finishing alone.
                    per_task = max(1, min(SERIES_PER_TASK, len(uids) // (4 * workers)))
                    futures = {pool.submit(process_batch, b, ctx): len(b) for b in _batches(uids, per_task)}
                    for fut in as_completed(futures):
                        total.merge(fut.result())
                        bar.update(futures[fut])
            finally:
                ctx.table.frozen = False
            redo, total.deferred = total.deferred, []
            if redo:
                log.info("%d series with new label names redone in the main process", len(redo))
                total.merge(process_batch(redo, ctx))
        else:
            for batch in _batches(uids, 1):
                total.merge(process_batch(batch, ctx))
                bar.update(len(batch))
    finally:
        bar.close()
    return total


def _unnamed_label_values(labels_dir: Path | None, names: dict[int, str],
                          ps: Pseudonymizer) -> list[tuple[int, str]]:
    """``(value, "label <value>")`` for NIfTI label values when no names file says what they are."""
    if labels_dir is None or names:
        return []
    import nibabel as nib
    import numpy as np

    values: set[int] = set()
    for path in sorted(labels_dir.glob("*.nii.gz")):
        try:
            values.update(int(v) for v in np.unique(np.asarray(nib.load(path).dataobj)) if v > 0)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the series using it reports the error
            # The file is named after a SeriesInstanceUID: the log gets its series key only.
            log.warning("label file of series %s unreadable: %s",
                        ps.key(path.name.removesuffix(".nii.gz"), "series"), type(exc).__name__)
    return [(v, f"label {v}") for v in sorted(values)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _seg_index(con: Any) -> dict[str, list[IndexRow]]:
    """Referenced SeriesInstanceUID -> SEG index rows (ground truth)."""
    marks = ",".join("?" * len(SEG_CLASSES))
    out: dict[str, list[IndexRow]] = {}
    query = f"SELECT path, size, mtime, ref_series_uid, segments FROM files WHERE kind='dicom' AND sop_class IN ({marks})"
    for r in con.execute(query, sorted(SEG_CLASSES)):
        if r["ref_series_uid"]:
            out.setdefault(r["ref_series_uid"], []).append(decode_row(r))  # segments as a list
    return out


def _unreadable_rows(con: Any, ctx: SeriesContext, names: FileNames) -> list[CatalogRow]:
    rows = []
    for r in con.execute("SELECT path, error, patient_id, study_uid, modality FROM files WHERE kind='unreadable'"):
        key = names.file_key(r["path"])
        rows.append(CatalogRow(
            series_key=key,
            subject_key=ctx.ps.key(r["patient_id"], "subject") if r["patient_id"] else "",
            study_key=ctx.ps.key(r["study_uid"], "study") if r["study_uid"] else "",
            modality=r["modality"] or "", status="error", n_instances=1,
            reason=f"file {key}: {_unreadable_reason(r['error'])}",
        ))
    for r in con.execute("SELECT path, patient_id, modality FROM files WHERE kind='dicom' AND series_uid IS NULL"):
        key = names.file_key(r["path"])
        rows.append(CatalogRow(
            series_key=key,
            subject_key=ctx.ps.key(r["patient_id"], "subject") if r["patient_id"] else "", study_key="",
            modality=r["modality"] or "", status="error", n_instances=1,
            reason=f"file {key}: missing (0020,000E) SeriesInstanceUID",
        ))
    return rows


def _unreadable_reason(error: str) -> str:
    """The index's error without a library's text: ``unreadable: <Type>: <message>`` keeps the type only.

    The message (cut at 160 characters, so a path in it may be cut too) stays in the private index.
    """
    if error.startswith("unreadable: "):
        kind = error.split(": ", 2)[1]
        return f"unreadable: {kind if kind.isidentifier() else 'error'} (details in the private index)"
    return error


def _write_links(path: Path, links: set[tuple[str, str, str]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8", perm=0o600) as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "original", "pseudonym"])
        writer.writerows(sorted(links))
