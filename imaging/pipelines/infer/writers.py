"""Writing a series' outputs (NIfTI mask, DICOM SEG, overlay) in processes beside the model.

Why processes, not the writer thread that wrote them before: the SEG is built and
written by pydicom/highdicom, pure Python holding the GIL, and a thread doing that
slowed the model's thread by half (measured: 6.0 s alone, 9.0 s beside a thread
writing SEGs, 6.5 s beside a NumPy thread). The model's loop needs the GIL between
its kernels, on a GPU even more than on a CPU. So the batch's writer thread inverts
the probabilities (torch, which releases the GIL) and hands the label volume to a
:class:`WriterPool` of spawned processes that import no torch.

A task never raises: it returns a :class:`WriteOutcome` with the files written or the
error's reason, and the log records it made, which the batch re-emits in its own
process (the hospital-side log; a spawned child has no logging configured). A
process that dies (a crash in a decoder) fails its series, and the pool is rebuilt.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from imaging.boundary import failure_reason
from imaging.cpus import run_in_background, usable_cpus
from imaging.data.nifti import load_nifti
from imaging.fsutil import atomic_path
from imaging.keys import Pseudonymizer
from imaging.layout import private_dir_of

log = logging.getLogger(__name__)


class SeriesError(Exception):
    """A series failed at a known stage; the message is the report's reason as is."""


def save_mask(path: str | os.PathLike[str], labels: np.ndarray, source_volume: str | os.PathLike[str]) -> None:
    """Write ``labels`` as NIfTI with the source volume's header geometry (atomically)."""
    src = load_nifti(source_volume)
    img = nib.Nifti1Image(labels.astype(np.uint8), src.affine)
    img.set_qform(src.affine, code=int(src.header["qform_code"]) or 1)
    img.set_sform(src.affine, code=int(src.header["sform_code"]) or 1)
    img.header.set_xyzt_units(*src.header.get_xyzt_units())
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


@dataclass
class SegSettings:
    """The SEG part of the batch settings (what a writer process needs of them)."""

    enabled: bool = True
    identity: str = "deidentified"
    deid_options: Any = None
    seg_type: str = "BINARY"
    geometry: str = "source"
    segments: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class WriteJob:
    """One series' outputs to write: everything crosses to the writer process by pickle."""

    series_key: str
    folder: Path
    volume_path: Path  # the ingested NIfTI the mask lies on
    labels: np.ndarray  # (i, j, k) uint8 on the volume's grid
    affine: np.ndarray
    names: dict[int, str]
    private_dir: Path | None
    seg: SegSettings
    overlay: bool
    window: tuple[float, float] | None
    title: str
    algorithm_name: str
    algorithm_version: str
    pseudonymizer: Pseudonymizer | None


@dataclass
class WriteOutcome:
    files: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)
    seg_frames: int = 0
    error: str = ""  # the report's reason when the series failed
    stage: str = "nifti"  # the step under way: the reason of a failure names it
    seconds: float = 0.0  # the writer process's time on it
    records: list[logging.LogRecord] = field(default_factory=list)


def write_outputs(job: WriteJob) -> WriteOutcome:
    """``seg.nii.gz``, then ``seg.dcm`` and ``overlay.png`` when asked. Never raises (see the module doc)."""
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    outcome = WriteOutcome()
    t0 = time.perf_counter()
    try:
        _write(job, outcome)
    except Exception as exc:  # isolate: the batch records the reason and goes on
        # highdicom/pydicom/nibabel text names absolute source paths: only the type and tag cross.
        outcome.error = failure_reason(exc, stage=outcome.stage, where=job.series_key,
                                       private_dir=errors_dir(job), own=(SeriesError,))
    finally:
        root.removeHandler(collect)
    outcome.records = collect.records
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _write(job: WriteJob, outcome: WriteOutcome) -> None:
    job.folder.mkdir(parents=True, exist_ok=True)
    save_mask(job.folder / "seg.nii.gz", job.labels, job.volume_path)
    outcome.files.append("seg.nii.gz")
    if job.seg.enabled:
        outcome.stage = "seg"
        frames, remark = _write_seg(job)
        outcome.seg_frames = frames
        outcome.files += ["seg.dcm"] if frames else []
        outcome.remarks += [remark] if remark else []
    if job.overlay:
        outcome.stage = "overlay"
        from imaging.review.overlay import overlay_montage

        image = np.asarray(load_nifti(job.volume_path).dataobj)
        image = image[..., 0] if image.ndim == 4 else image
        overlay_montage(job.folder / "overlay.png", image, job.labels, job.affine, job.names, job.window,
                        title=job.title)
        outcome.files.append("overlay.png")


def _write_seg(job: WriteJob) -> tuple[int, str]:
    from imaging.dicom.seg import write_seg
    from imaging.dicom.source_frames import load_source

    src_json = job.private_dir / "sources" / f"{job.series_key}.json" if job.private_dir else None
    if src_json is None or not src_json.is_file():
        return 0, "no DICOM SEG: the private sources index for this series is missing"
    try:
        source = load_source(src_json)
    except Exception as exc:  # noqa: BLE001 - pydicom's errors are not all OSError/ValueError
        # The message names source paths: it goes to the private errors.jsonl, never the log or report.
        failure_reason(exc, stage="seg source", where=job.series_key, private_dir=errors_dir(job))
        log.warning("%s: source DICOM unreadable (%s)", job.series_key, type(exc).__name__)
        raise SeriesError(f"seg: the source DICOM of this series is missing or unreadable "
                          f"({type(exc).__name__}; details in the private errors.jsonl)") from exc
    s = job.seg
    result = write_seg(job.folder / "seg.dcm", source, job.labels, job.affine, job.names, s.segments,
                       algorithm_name=job.algorithm_name, algorithm_version=job.algorithm_version,
                       pseudonymizer=job.pseudonymizer, identity=s.identity,
                       header_deid=_header_deid(job.pseudonymizer, s.deid_options),
                       segmentation_type=s.seg_type, geometry=s.geometry)
    if result is None:
        (job.folder / "seg.dcm").unlink(missing_ok=True)  # a stale SEG from an earlier model must go
        return 0, "no foreground: no DICOM SEG written"
    return result.n_frames, ""


def _header_deid(pseudonymizer: Any, options: Any) -> Any:
    """The SEG header's de-identification (``imaging deid``'s), or None without a secret."""
    if pseudonymizer is None:
        return None
    from imaging.deid.seg_header import header_deid

    return header_deid(pseudonymizer, options)


def errors_dir(job: WriteJob) -> Path:
    return private_dir_of(job.folder.parent, job.private_dir)


class _Collect(logging.Handler):
    """Keeps a task's log records (message formatted, arguments dropped: they cross by pickle)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:  # noqa: BLE001 - a malformed log call must not fail the series
            self.handleError(record)
            return
        record.exc_info = record.exc_text = None
        self.records.append(record)


def _init_child() -> None:
    run_in_background()  # the model's thread comes first when the cores are oversubscribed
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied module at INFO
    logging.lastResort = None  # records go back to the batch, not to this process's stderr


def write_workers_from_cpus() -> int:
    """Writer processes: a quarter of the job's CPUs, 1 to 4 (the model and prefetch have the rest)."""
    return max(1, min(4, usable_cpus() // 4))


class WriterPool:
    """Spawned writer processes; a dead one fails only its own series and the pool is rebuilt."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the writer pool is closed")
            if self._pool is None:
                self._pool = _spawn_pool(self.workers)
            return self._pool

    def start(self) -> None:
        """Start the processes now (their imports overlap the first series' reading and model time)."""
        for _ in range(self.workers):
            self._executor().submit(_warm)

    def submit(self, job: WriteJob) -> Future[WriteOutcome]:
        try:
            return self._executor().submit(write_outputs, job)
        except BrokenProcessPool:
            self._reset()
            return self._executor().submit(write_outputs, job)

    def result(self, future: Future[WriteOutcome], job: WriteJob) -> WriteOutcome:
        """The outcome. When a writer process died, each series it had in flight is written
        again in a process of its own: the one that kills it again fails, the others go through."""
        try:
            return future.result()
        except BrokenProcessPool:
            self._reset()
        except Exception as exc:  # noqa: BLE001 - e.g. the job did not pickle: this series' error
            return WriteOutcome(error=failure_reason(exc, stage="write", where=job.series_key,
                                                     private_dir=errors_dir(job)))
        alone = _spawn_pool(1)
        try:
            return alone.submit(write_outputs, job).result()
        except BrokenProcessPool as exc:
            return WriteOutcome(error=f"write: the writer process died twice on this series "
                                      f"({type(exc).__name__})")
        except Exception as exc:  # noqa: BLE001
            return WriteOutcome(error=failure_reason(exc, stage="write", where=job.series_key,
                                                     private_dir=errors_dir(job)))
        finally:
            alone.shutdown(wait=True)

    def _reset(self) -> None:
        with self._lock:
            broken, self._pool = self._pool, None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent has torch and threads running
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_child)


def reemit(records: list[logging.LogRecord]) -> None:
    """Log a writer process's records here, through this process's handlers (levels still apply)."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _warm() -> None:
    import imaging.dicom.seg  # noqa: F401  (pydicom, highdicom: the slow imports, done once)
    import imaging.review.overlay  # noqa: F401
