"""Batch inference over a dataset catalog: sharded, resumable, prefetching, failure-isolated.

Three stages on three threads, joined by small bounded queues (memory does not
grow with the number of series):

1. *prefetch*: read + preprocess the next series on a pool of threads sized from
   the CPUs the job has (``prefetch_workers``), handed on in order;
2. *model*: sliding-window inference (the main thread: it owns the GPU);
3. *writer*: invert the probabilities to the source grid (linear) and take the argmax
   (a thread: torch releases the GIL), then hand the label volume to writer *processes*
   (:mod:`imaging.pipelines.infer.writers`: pydicom/highdicom hold the GIL, and a thread writing
   SEGs slowed the model by half) for ``seg.nii.gz``, ``seg.dcm``, ``overlay.png``; then
   the ``done/<series_key>.json`` marker, last and atomically, while the model already
   runs the next series.

Resume markers and the merged report: :mod:`imaging.pipelines.infer.resume`; which
series a shard takes: :mod:`imaging.pipelines.infer.inputs`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from imaging.boundary import failure_reason
from imaging.cpus import run_in_background, usable_cpus
from imaging.dicom.catalog import CatalogRow
from imaging.engine.predict import Prepared, SeriesPredictor
from imaging.fsutil import atomic_write_json
from imaging.keys import Pseudonymizer
from imaging.layout import private_dir_of
from imaging.pipelines.infer.inputs import shard_keys
from imaging.pipelines.infer.report import ReportRow, label_volumes, write_report
from imaging.pipelines.infer.resume import (
    MAX_ATTEMPTS,
    ModelInfo,
    attempts,
    count_attempt,
    drop_stale_marker_temps,
    is_done,
    marker_path,
    merge_reports,
    record,
    report_rows,
)
from imaging.pipelines.infer.writers import (
    SegSettings,
    SeriesError,
    WriteJob,
    WriteOutcome,
    WriterPool,
    reemit,
    write_workers_from_cpus,
)

log = logging.getLogger(__name__)


@dataclass
class BatchSettings:
    """Everything the batch needs besides the model (from ``conf/infer.yaml``)."""

    dataset_dir: Path
    output_dir: Path
    private_dir: Path | None = None
    shard_index: int = 0
    shard_count: int = 1
    prefetch: int = 2  # prepared series queued ahead of the model
    prefetch_workers: int = 0  # threads reading + preprocessing in parallel; 0: from the CPUs the job has
    write_workers: int = 0  # processes writing NIfTI/SEG/overlay; 0: from the CPUs the job has
    write_seg: bool = True
    seg_identity: str = "deidentified"
    seg_deid_options: Any = None  # DeidOptions of the de-identified SEG header (None: defaults)
    seg_type: str = "BINARY"
    seg_geometry: str = "source"  # source | regular (imaging.dicom.seg.GEOMETRIES)
    segments: Mapping[str, Any] = field(default_factory=dict)
    overlay: bool = True
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard.index={self.shard_index} must be in [0, shard.count={self.shard_count})")


@dataclass
class BatchResult:
    n_total: int = 0  # series in this shard
    n_ok: int = 0
    n_error: int = 0
    n_skipped_done: int = 0
    wall_s: float = 0.0
    shard_report: Path | None = None
    merged_report: Path | None = None
    merged_complete: bool = False

    @property
    def series_per_s(self) -> float:
        done = self.n_ok + self.n_error
        return done / self.wall_s if self.wall_s > 0 else 0.0


def prefetch_workers_from_cpus() -> int:
    """Prefetch threads: the CPUs this job may use (Slurm's cgroup/affinity), less one for the model loop."""
    return max(1, min(8, usable_cpus() - 1))


class _Stop:
    """Queue sentinel: the producer is finished."""


@dataclass
class _Writing:
    """A series handed to the writer processes, waiting for its outcome."""

    job: WriteJob
    future: Future[WriteOutcome]
    t_load: float
    t_preprocess: float
    t_infer: float
    t_invert: float


def _drop_stale_temps(folder: Path) -> None:
    # A SIGKILL mid-write leaves '.<name>.*.tmp*' beside the outputs; they are never read.
    for tmp in folder.glob(".*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class BatchRunner:
    """Run one shard of a batch. See the module docstring for the pipeline."""

    def __init__(self, predictor: SeriesPredictor, model: ModelInfo, settings: BatchSettings,
                 pseudonymizer: Pseudonymizer | None = None) -> None:
        self.predictor, self.model, self.s, self.pseudo = predictor, model, settings, pseudonymizer
        self.out = settings.output_dir
        self.shard = f"{settings.shard_index}/{settings.shard_count}"
        self.names = {int(k): str(v) for k, v in model.labels.items()}
        s = settings
        self._seg = SegSettings(s.write_seg, s.seg_identity, s.seg_deid_options, s.seg_type, s.seg_geometry,
                                dict(s.segments))  # what a writer process needs of the settings
        self._fatal: BaseException | None = None

    def _row(self, cat: CatalogRow, status: str, reason: str = "", **kw: Any) -> ReportRow:
        return ReportRow(cat.series_key, cat.subject_key, status, reason, self.model.name, str(self.model.version),
                         self.model.alias, self.shard, **kw)

    def _reason(self, exc: BaseException, stage: str, cat: CatalogRow) -> str:
        """The row's reason: ours as is; a library's (paths, values) only as type and tag, its text private."""
        return failure_reason(exc, stage=stage, where=cat.series_key, private_dir=private_dir_of(self.out, self.s.private_dir),
                              own=(SeriesError,))

    # -- stage 1 ---------------------------------------------------------------------
    def _prefetch(self, todo: list[CatalogRow], q: queue.Queue[Any]) -> None:
        """Prepare series on a pool of threads (gzip, resampling and NumPy release the GIL), in order."""
        workers = self.s.prefetch_workers or prefetch_workers_from_cpus()
        window = workers + max(1, self.s.prefetch)  # series in flight: bounds memory
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="prefetch", initializer=run_in_background) as pool:
                pending: deque[tuple[CatalogRow, Future[Prepared | SeriesError]]] = deque()
                for cat in todo:
                    pending.append((cat, pool.submit(self._prepare, cat)))
                    if len(pending) >= window:
                        first, fut = pending.popleft()
                        q.put((first, fut.result()))
                while pending:
                    first, fut = pending.popleft()
                    q.put((first, fut.result()))
        finally:  # whatever happens, the model loop is told there is nothing more
            q.put(_Stop())

    def _prepare(self, cat: CatalogRow) -> Prepared | SeriesError:
        count_attempt(self.out, cat.series_key)
        if cat.status != "ok" or not cat.volume_path:
            return SeriesError(f"ingest {cat.status}: {cat.reason or 'no volume in the catalog'}")
        if cat.n_timepoints > 1:
            return SeriesError(f"4D series ({cat.n_timepoints} time points): the model takes 3D volumes; "
                               "ingest with split_4d=true to predict each time point")
        try:
            return self.predictor.prepare(self.s.dataset_dir / cat.volume_path)
        except Exception as exc:  # isolate: the batch goes on
            return SeriesError(self._reason(exc, f"read/preprocess {cat.volume_path}", cat))  # a keyed path

    # -- stage 3 ---------------------------------------------------------------------
    def _submit(self, cat: CatalogRow, payload: Any, pool: WriterPool) -> _Writing | BaseException:
        """Invert here (torch), write in a writer process. An exception is the series' error."""
        if isinstance(payload, BaseException):
            return payload
        prepared, probs, t_infer = payload
        t0 = time.perf_counter()
        try:
            labels, affine = self.predictor.invert(prepared, probs)
        except Exception as exc:
            return exc
        folder = self.out / cat.series_key
        folder.mkdir(parents=True, exist_ok=True)
        _drop_stale_temps(folder)
        s = self.s
        job = WriteJob(cat.series_key, folder, prepared.source_path, labels, affine, self.names, s.private_dir,
                       self._seg, s.overlay, s.window, f"{cat.series_key}  {self.model.name} v{self.model.version}",
                       self.model.name, str(self.model.version), self.pseudo)
        return _Writing(job, pool.submit(job), prepared.t_load, prepared.t_preprocess, t_infer,
                        time.perf_counter() - t0)

    def _written(self, cat: CatalogRow, writing: _Writing | BaseException, pool: WriterPool,
                 result: BatchResult, bar: tqdm) -> None:
        """Wait for a series' outputs and record its row (done/ marker last) or its error."""
        exc = writing if isinstance(writing, BaseException) else None
        if isinstance(writing, _Writing):
            outcome = pool.result(writing.future, writing.job)
            reemit(outcome.records)
            if outcome.error:
                exc = SeriesError(outcome.error)
            else:
                job = writing.job
                voxels, ml = label_volumes(job.labels, job.affine, self.names)
                row = self._row(cat, "ok", "; ".join(outcome.remarks), t_load=round(writing.t_load, 4),
                                t_preprocess=round(writing.t_preprocess, 4), t_infer=round(writing.t_infer, 4),
                                t_write=round(writing.t_invert + outcome.seconds, 4),
                                seg_frames=outcome.seg_frames, voxels=voxels, volume_ml=ml)
                record(self.out, row, outcome.files, self.model.options_key)
                result.n_ok += 1
        if exc is not None:
            reason = self._reason(exc, "invert", cat)
            log.warning("%s: %s", cat.series_key, reason)
            record(self.out, self._row(cat, "error", reason))
            result.n_error += 1
        bar.update(1)

    def _writer(self, q: queue.Queue[Any], result: BatchResult, bar: tqdm, pool: WriterPool) -> None:
        in_flight: deque[tuple[CatalogRow, _Writing | BaseException]] = deque()
        run_in_background()
        try:
            while not isinstance(item := q.get(), _Stop):
                cat, payload = item
                in_flight.append((cat, self._submit(cat, payload, pool)))
                while len(in_flight) > pool.workers:  # one queued per process: memory stays bounded
                    self._written(*in_flight.popleft(), pool, result, bar)
            while in_flight:
                self._written(*in_flight.popleft(), pool, result, bar)
        except BaseException as exc:  # e.g. the output disk is full: stop the batch, say why
            self._fatal = exc
            raise

    def _put(self, q: queue.Queue[Any], item: Any, consumer: threading.Thread) -> None:
        """Hand ``item`` on; never wait forever on a consumer that died."""
        while True:
            try:
                q.put(item, timeout=1.0)
                return
            except queue.Full:
                if not consumer.is_alive():
                    raise RuntimeError(f"the {consumer.name} thread stopped: {self._fatal!r}") from self._fatal

    # -- the shard -------------------------------------------------------------------
    def run(self, catalog: list[CatalogRow]) -> BatchResult:
        """Predict every not-yet-done series of this shard, then write the shard and merged reports."""
        t_start = time.perf_counter()
        by_key = {r.series_key: r for r in catalog if r.status != "skipped"}  # skipped: not images
        mine = shard_keys(list(by_key), self.s.shard_index, self.s.shard_count)
        drop_stale_marker_temps(self.out, set(mine))
        todo = [by_key[k] for k in mine if not is_done(self.out, k, self.model)]
        result = BatchResult(n_total=len(mine), n_skipped_done=len(mine) - len(todo))
        crashed = [c for c in todo if attempts(self.out, c.series_key) >= MAX_ATTEMPTS]
        for cat in crashed:  # the process died on it twice: report it, do not die a third time
            row = self._row(cat, "error", f"skipped: the process died {MAX_ATTEMPTS} times while on this series "
                                          f"(remove attempted/{cat.series_key}.json to try again)")
            atomic_write_json(marker_path(self.out, "errors", cat.series_key), row.to_json())
            log.error("%s", row.reason)
        result.n_error += len(crashed)
        # Series a dead process was on go last: the innocent ones finish (and clear their
        # markers) before a suspect can take the process down again.
        todo = sorted((c for c in todo if c not in crashed), key=lambda c: attempts(self.out, c.series_key) > 0)
        log.info("shard %s: %d series, %d already done", self.shard, len(mine), result.n_skipped_done)
        prefetched: queue.Queue[Any] = queue.Queue(maxsize=max(1, self.s.prefetch))
        to_write: queue.Queue[Any] = queue.Queue(maxsize=2)
        bar = tqdm(total=len(todo), unit="series", desc=f"infer shard {self.shard}", dynamic_ncols=True)
        pool = WriterPool(self.s.write_workers or write_workers_from_cpus())
        if todo:
            pool.start()  # the processes' imports overlap the first series' reading and model time
        reader = threading.Thread(target=self._prefetch, args=(todo, prefetched), daemon=True, name="prefetch")
        writer = threading.Thread(target=self._writer, args=(to_write, result, bar, pool), daemon=True,
                                  name="writer")
        reader.start()
        writer.start()
        try:
            while not isinstance(item := prefetched.get(), _Stop):
                cat, prepared = item
                if isinstance(prepared, BaseException):
                    self._put(to_write, (cat, prepared), writer)
                    continue
                t0 = time.perf_counter()
                try:
                    out: Any = (prepared, self.predictor.forward(prepared), time.perf_counter() - t0)
                except torch.cuda.OutOfMemoryError as exc:
                    torch.cuda.empty_cache()
                    out = SeriesError(f"infer: out of memory on {self.predictor.device} "
                                      f"({self._reason(exc, 'infer', cat)})")
                except Exception as exc:
                    out = SeriesError(self._reason(exc, "infer", cat))
                self._put(to_write, (cat, out), writer)
            self._put(to_write, _Stop(), writer)
            writer.join()
            reader.join()
        finally:
            pool.close()
        bar.close()
        if self._fatal is not None:
            raise RuntimeError(f"batch stopped: {self._fatal!r}") from self._fatal
        result.wall_s = time.perf_counter() - t_start
        names = [n for v, n in sorted(self.names.items()) if v != 0]
        s = self.s
        result.shard_report = self.out / f"report.shard-{s.shard_index}-of-{s.shard_count}.csv"
        write_report(report_rows(self.out, mine), result.shard_report, names)
        result.merged_report, result.merged_complete = merge_reports(self.out, sorted(by_key), self.model)
        return result
