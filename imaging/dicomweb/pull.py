"""Pull studies from a DICOMweb server into a local export folder: QIDO-RS query, WADO-RS retrieve.

Layout of the export (hospital side, like any PACS export: it holds real UIDs):
``<output_dir>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Resumable and never half-written: instances are downloaded (in parallel, one
request per instance) into a staging folder beside the export
(``<output_dir>.partial``), each written atomically after it parsed as DICOM and
its SOPInstanceUID matched the request. Archives cap QIDO answers without saying
so (Orthanc's ``LimitFindInstances``: 51 of a 140-slice series), so each series'
listing is checked against the count the archive keeps itself
(NumberOfSeriesRelatedInstances); a short listing is replaced by one series-level
WADO-RS retrieve, a short series list by the study's WADO-RS metadata. Only when
*every* series holds as many instances as the archive counts does the study move
into the export (else it is ``incomplete``), so whoever reads the export (ingest)
never sees a study with a hole. An instance already in the export or in staging
is not fetched again. A study that fails (vanished, 401, truncated instance...)
is one row of the summary (:mod:`imaging.dicomweb.pull_summary`), named by its study key;
the other studies go on. Listing and paging are :mod:`imaging.dicomweb.qido`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from struct import error as struct_error

import pydicom
import pydicom.encaps
import requests
from dicomweb_client.api import DICOMwebClient
from tqdm import tqdm

from imaging.dicomweb.client import explain
from imaging.dicomweb.pull_summary import PullSummary, StudyPull
from imaging.dicomweb.qido import SOP_UID, InstanceRef, SeriesToPull, list_series, tag_value
from imaging.fsutil import atomic_path

log = logging.getLogger(__name__)


@dataclass
class _Fetched:
    """What one retrieve (an instance, or a whole series) brought; ``reason``: the first failure."""

    n_fetched: int
    n_failed: int
    reason: str


_RETRIEVE_ERRORS = (requests.RequestException, pydicom.errors.InvalidDicomError, ValueError, EOFError, OSError)


def truncated_pixels(ds: pydicom.Dataset) -> str:
    """Why the pixel data is shorter than the header says, or ''.

    pydicom reads a file cut inside Pixel Data without complaint (the element just
    comes out short), so a truncated body would pass as an instance: check the
    length for native pixels, and that the fragments parse for encapsulated ones.
    """
    if "PixelData" not in ds:
        return ""
    data = ds.PixelData
    if getattr(ds.file_meta, "TransferSyntaxUID", None) is not None and ds.file_meta.TransferSyntaxUID.is_encapsulated:
        try:
            n = sum(1 for _ in pydicom.encaps.generate_frames(data, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
        except (ValueError, EOFError, struct_error) as exc:
            return f"encapsulated Pixel Data does not parse: {exc}"
        return "" if n else "no frame in the encapsulated Pixel Data"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    expected = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * frames * int(ds.get("SamplesPerPixel", 1) or 1)
    expected = (expected * bits + 7) // 8
    return f"Pixel Data has {len(data)} of {expected} bytes" if len(data) < expected else ""


class Puller:
    """Pull studies into ``output_dir`` with ``workers`` parallel retrieves.

    Args:
        client: a connected ``DICOMwebClient`` (see :class:`~imaging.dicomweb.client.DicomwebSettings`).
        output_dir: the export folder (created).
        study_key: names a study in messages (default: the UID itself; pass a keyed hash
            when the summary goes to the dataset side).
        workers: parallel WADO-RS requests.
        progress: show a tqdm bar over instances.
    """

    def __init__(self, client: DICOMwebClient, output_dir: Path, *, study_key: Callable[[str], str] = str,
                 workers: int = 4, progress: bool = True) -> None:
        self.client, self.out, self.key = client, Path(output_dir), study_key
        self.staging = self.out.with_name(self.out.name + ".partial")
        self.workers, self.progress = max(1, int(workers)), progress

    def _staged(self, inst: InstanceRef) -> Path:
        return self.staging / inst.study / inst.series / f"{inst.sop}.dcm"

    def _on_disk(self, study: str, series: str) -> set[str]:
        """SOPInstanceUIDs of ``series`` already in the export or in staging (a resumed pull)."""
        return {p.stem for folder in (self.out, self.staging) for p in (folder / study / series).glob("*.dcm")}

    def _check_and_stage(self, ds: pydicom.Dataset, inst: InstanceRef) -> str:
        """Write one retrieved instance into staging; '' when ok, else why (no UID in it)."""
        if not inst.sop or str(ds.get("SOPInstanceUID", "")) != inst.sop or \
                str(ds.get("SeriesInstanceUID", "")) != inst.series:
            return "retrieve: the server answered with another instance than asked for"
        damage = truncated_pixels(ds)
        if damage:
            return f"retrieve: truncated instance ({damage})"
        try:
            with atomic_path(self._staged(inst), suffix=".dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except (ValueError, AttributeError, OSError, TypeError) as exc:
            return f"retrieve: the instance cannot be written as DICOM ({type(exc).__name__}: {exc})"
        return ""

    def _fetch(self, inst: InstanceRef) -> _Fetched:
        """Retrieve one instance (WADO-RS instance level) into staging."""
        try:
            ds = self.client.retrieve_instance(inst.study, inst.series, inst.sop)
        except _RETRIEVE_ERRORS as exc:  # a truncated body fails to parse: ValueError/EOFError from pydicom
            return _Fetched(0, 1, explain(exc, "retrieve"))
        why = self._check_and_stage(ds, inst)
        return _Fetched(0 if why else 1, 1 if why else 0, why)

    def _fetch_series(self, series: SeriesToPull) -> _Fetched:
        """Retrieve a whole series (WADO-RS series level) into staging, for a listing the archive capped.

        Instances already on disk are read from the stream but not written again; what the
        stream holds is checked against the archive's count afterwards (:meth:`pull`).
        """
        have = self._on_disk(series.study, series.uid)
        done = _Fetched(0, 0, "")
        try:
            for ds in self.client.iter_series(series.study, series.uid):
                sop = str(ds.get("SOPInstanceUID", ""))
                if sop in have:
                    continue
                why = self._check_and_stage(ds, InstanceRef(series.study, series.uid, sop))
                done.n_fetched += 0 if why else 1
                done.n_failed += 1 if why else 0
                done.reason = done.reason or why
                have.add(sop)
        except _RETRIEVE_ERRORS as exc:
            done.reason = done.reason or explain(exc, "retrieve (whole series)")
        if len(have) < series.size:  # the stream ended early (Orthanc cuts it at an unreadable file)
            self._fetch_rest(series, have, done)
        return done

    def _fetch_rest(self, series: SeriesToPull, have: set[str], done: _Fetched) -> None:
        """After a short series retrieve: list the series by its WADO-RS metadata (not capped as QIDO
        is) and retrieve the missing instances one by one, so only the unreadable ones fail."""
        try:
            items = self.client.retrieve_series_metadata(series.study, series.uid)
        except _RETRIEVE_ERRORS as exc:
            done.n_failed += series.size - len(have)
            done.reason = done.reason or explain(exc, "series metadata")
            return
        for sop in sorted({tag_value(item, SOP_UID) for item in items} - have - {""}):
            got = self._fetch(InstanceRef(series.study, series.uid, sop))
            done.n_fetched += got.n_fetched
            done.n_failed += got.n_failed
            done.reason = done.reason or got.reason

    def _promote(self, study: str) -> Path:
        """Move a complete study from staging into the export, file by file (each rename is atomic)."""
        for staged in sorted((self.staging / study).glob("*/*.dcm")):
            final = self.out / study / staged.parent.name / staged.name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        shutil.rmtree(self.staging / study, ignore_errors=True)
        return self.out / study

    def _plan(self, study: str, modality: str, row: StudyPull) -> list[SeriesToPull] | None:
        """List the study's series; None (and ``row`` says why) when it cannot be pulled."""
        try:
            series = list_series(self.client, study, modality)
        except requests.RequestException as exc:
            row.status, row.reason = "error", explain(exc, f"study {row.key}: query")
            return None
        row.n_series = len(series)
        row.n_instances = sum(s.size for s in series)
        if not row.n_instances:
            row.status = "error"
            row.reason = f"study {row.key}: no {modality + ' ' if modality else ''}instances on the server"
            return None
        return series

    def _tasks(self, row: StudyPull, series: Sequence[SeriesToPull]) -> list[tuple[StudyPull, int, Callable[[], _Fetched]]]:
        """(row, instances it covers, fetch) for what is not on disk yet; counts the rest as present."""
        tasks: list[tuple[StudyPull, int, Callable[[], _Fetched]]] = []
        for s in series:
            have = self._on_disk(s.study, s.uid)
            if s.capped:  # the listing is short: the whole series, unless a run before got all of it
                row.n_present += len(have)
                if len(have) < s.size:
                    tasks.append((row, s.size - len(have), partial(self._fetch_series, s)))
                continue
            for inst in s.listed:
                if inst.sop in have:
                    row.n_present += 1
                else:
                    tasks.append((row, 1, partial(self._fetch, inst)))
        return tasks

    def _short(self, row: StudyPull, series: Sequence[SeriesToPull]) -> str:
        """Why the study is incomplete on disk against the archive's own counts, or ''."""
        short = []
        for i, s in enumerate(series, 1):
            have = len(self._on_disk(s.study, s.uid))
            if have < s.size:
                short.append(f"series {i} of {len(series)}: {have} of {s.size} instances")
        return f"study {row.key}: incomplete ({'; '.join(short)})" if short else ""

    def pull(self, studies: Sequence[str], modality: str = "") -> PullSummary:
        """Pull each study (all series, or only ``modality``'s). Never raises for one study's failure.

        A study enters the export only when every series holds as many instances as the
        archive counts for it (NumberOfSeriesRelatedInstances); otherwise its status is
        ``incomplete`` (or ``error`` when a retrieve failed) and it waits in staging.
        """
        summary = PullSummary()
        plans: list[tuple[StudyPull, str, list[SeriesToPull]]] = []
        for study in studies:
            row = StudyPull(self.key(study))
            summary.studies.append(row)
            series = self._plan(study, modality, row)
            if series is not None:
                plans.append((row, study, series))
        todo = [task for row, _, series in plans for task in self._tasks(row, series)]
        bar = tqdm(total=sum(n for _, n, _ in todo), unit="inst", desc="pull", disable=not self.progress,
                   dynamic_ncols=True)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="wado") as pool:
            for (row, n, _), got in zip(todo, pool.map(lambda t: t[2](), todo), strict=True):
                bar.update(n)
                row.n_fetched += got.n_fetched
                row.n_failed += got.n_failed
                if got.reason:
                    row.reason = row.reason or f"study {row.key}: {got.reason}"
        bar.close()
        for row, study, series in plans:
            if row.n_failed:
                row.status = "error"
                row.reason += f" ({row.n_failed} of {row.n_instances} instances failed; the study stays out "
                row.reason += "of the export, a re-run fetches only what is missing)"
            elif short := self._short(row, series):
                row.status = "incomplete"
                row.reason = short + " against the archive's counts; the study stays out of the export"
            else:
                row.path = self._promote(study)
                continue
            log.warning("%s", row.reason)
        return summary
