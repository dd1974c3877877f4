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
is one row of the summary, named by its study key; the other studies go on.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from struct import error as struct_error
from typing import Any

import pydicom
import pydicom.encaps
import requests
from dicomweb_client.api import DICOMwebClient
from tqdm import tqdm

from imaging.dicomweb.client import explain
from imaging.fsutil import atomic_path

log = logging.getLogger(__name__)

# DICOM JSON tags (PS3.18 F.2): QIDO answers are keyed by tag, not keyword.
_STUDY_UID, _SERIES_UID, _SOP_UID, _MODALITY = "0020000D", "0020000E", "00080018", "00080060"
_N_STUDY_SERIES, _N_SERIES_INST = "00201206", "00201209"  # NumberOfStudyRelatedSeries, NumberOfSeriesRelatedInstances


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


@dataclass(frozen=True)
class PullQuery:
    """QIDO-RS study filters (``query.*`` in ``conf/pull.yaml``); empty fields do not filter.

    ``modality`` also keeps only the series of that modality (a CT model needs the CT series,
    not the SEG or SR objects of the same study).
    """

    modality: str = ""
    date: str = ""  # DICOM range, e.g. 20240101-20240131
    patient_id: str = ""

    def filters(self) -> dict[str, str]:
        out = {"ModalitiesInStudy": self.modality, "StudyDate": self.date, "PatientID": self.patient_id}
        return {k: str(v) for k, v in out.items() if v}


@dataclass
class StudyPull:
    """One study's outcome. ``key`` names it in logs and reports (a keyed hash where a secret is set)."""

    key: str
    status: str = "ok"  # ok | incomplete (fewer instances than the archive counts) | error
    reason: str = ""
    n_series: int = 0
    n_instances: int = 0
    n_fetched: int = 0
    n_present: int = 0  # already on disk before this run
    n_failed: int = 0
    path: Path | None = None  # the study's export folder when ok


@dataclass
class PullSummary:
    studies: list[StudyPull] = field(default_factory=list)

    @property
    def ok(self) -> list[StudyPull]:
        return [s for s in self.studies if s.status == "ok"]

    @property
    def failed(self) -> list[StudyPull]:
        return [s for s in self.studies if s.status != "ok"]

    def totals(self) -> dict[str, int]:
        return {"studies": len(self.studies), "studies_ok": len(self.ok), "studies_failed": len(self.failed),
                "series": sum(s.n_series for s in self.studies),
                "instances": sum(s.n_instances for s in self.studies),
                "fetched": sum(s.n_fetched for s in self.studies),
                "already_present": sum(s.n_present for s in self.studies),
                "instances_failed": sum(s.n_failed for s in self.studies)}


@dataclass
class _Fetched:
    """What one retrieve (an instance, or a whole series) brought; ``reason``: the first failure."""

    n_fetched: int
    n_failed: int
    reason: str


_RETRIEVE_ERRORS = (requests.RequestException, pydicom.errors.InvalidDicomError, ValueError, EOFError, OSError)


@dataclass(frozen=True)
class _Instance:
    study: str
    series: str
    sop: str


@dataclass
class _Series:
    """One series to pull: what QIDO listed of it and how many instances the archive says it holds."""

    study: str
    uid: str
    expected: int | None  # NumberOfSeriesRelatedInstances; None when the archive does not say
    listed: list[_Instance]

    @property
    def capped(self) -> bool:
        """The listing stopped short of the count (the archive caps QIDO answers): retrieve the whole series."""
        return self.expected is not None and len(self.listed) < self.expected

    @property
    def size(self) -> int:
        return max(self.expected or 0, len(self.listed))


PAGE = 500


def _all_pages(search: Callable[..., list[dict[str, Any]]], tag: str) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, page by page.

    Hand-written because dicomweb-client's ``get_remaining=True`` loops forever on
    servers that ignore ``offset`` (Orthanc 1.10's plugin): stop on a short page or
    on a page that brings nothing new.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page = search(limit=PAGE, offset=len(out))
        new = [item for item in page if _value(item, tag) not in seen]
        seen.update(_value(item, tag) for item in new)
        out += new
        if len(page) < PAGE or not new:
            return out


def _count(item: Mapping[str, Any], tag: str) -> int | None:
    """An ``IS`` count of a QIDO answer (``NumberOf...Related...``), None when absent or unreadable."""
    try:
        return int(_value(item, tag))
    except ValueError:
        return None


def as_uid_list(value: object) -> list[str]:
    """``study=UID`` (one value, as anyone types it) or ``study=[A,B]``: a list of UIDs.

    A bare string would otherwise be iterated character by character.
    """
    if value is None or value == "":
        return []
    items = [value] if isinstance(value, (str, int, float)) else list(value)  # type: ignore[call-overload]
    return [str(v).strip() for v in items if str(v).strip()]


def find_studies(client: DICOMwebClient, query: PullQuery) -> list[str]:
    """StudyInstanceUIDs matching ``query`` (QIDO-RS, all pages).

    Raises:
        requests.RequestException: the server is unreachable or refused the query.
    """
    found = _all_pages(lambda **kw: client.search_for_studies(search_filters=query.filters(),
                                                              fields=["StudyInstanceUID"], **kw), _STUDY_UID)
    return sorted({_value(s, _STUDY_UID) for s in found} - {""})


def _series_count(client: DICOMwebClient, study: str) -> int | None:
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study},
                                      fields=["NumberOfStudyRelatedSeries"])
    return _count(found[0], _N_STUDY_SERIES) if found else None


def _series_from_metadata(client: DICOMwebClient, study: str, modality: str) -> list[_Series]:
    """Every series of ``study`` from its WADO-RS metadata, which archives do not cap as they cap QIDO."""
    by_series: dict[str, list[_Instance]] = {}
    for item in client.retrieve_study_metadata(study):
        if modality and _value(item, _MODALITY).upper() != modality.upper():
            continue
        uid = _value(item, _SERIES_UID)
        by_series.setdefault(uid, []).append(_Instance(study, uid, _value(item, _SOP_UID)))
    return [_Series(study, uid, len(insts), insts) for uid, insts in sorted(by_series.items())]


def _list_series(client: DICOMwebClient, study: str, modality: str) -> list[_Series]:
    """The series of ``study`` to pull, each with its listed instances and its count from the archive.

    Archives cap QIDO answers (Orthanc's ``LimitFindResults``/``LimitFindInstances``, a PACS's
    maximum results) without saying so: the counts the archive computes itself
    (NumberOfStudyRelatedSeries, NumberOfSeriesRelatedInstances) tell a short answer apart.
    """
    found = _all_pages(lambda **kw: client.search_for_series(
        study_instance_uid=study, fields=["Modality", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"],
        **kw), _SERIES_UID)
    total = _series_count(client, study)
    if total is not None and len({_value(s, _SERIES_UID) for s in found}) < total:
        log.info("the archive listed %d of %d series of a study: listing it from its metadata", len(found), total)
        return _series_from_metadata(client, study, modality)
    if modality:
        found = [s for s in found if _value(s, _MODALITY).upper() == modality.upper()]
    out = []
    for s in found:
        uid = _value(s, _SERIES_UID)
        listed = _all_pages(partial(client.search_for_instances, study_instance_uid=study, series_instance_uid=uid,
                                    fields=["SOPInstanceUID"]), _SOP_UID)
        out.append(_Series(study, uid, _count(s, _N_SERIES_INST), [_Instance(study, uid, _value(i, _SOP_UID))
                                                                 for i in listed]))
    return out


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

    def _staged(self, inst: _Instance) -> Path:
        return self.staging / inst.study / inst.series / f"{inst.sop}.dcm"

    def _on_disk(self, study: str, series: str) -> set[str]:
        """SOPInstanceUIDs of ``series`` already in the export or in staging (a resumed pull)."""
        return {p.stem for folder in (self.out, self.staging) for p in (folder / study / series).glob("*.dcm")}

    def _check_and_stage(self, ds: pydicom.Dataset, inst: _Instance) -> str:
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

    def _fetch(self, inst: _Instance) -> _Fetched:
        """Retrieve one instance (WADO-RS instance level) into staging."""
        try:
            ds = self.client.retrieve_instance(inst.study, inst.series, inst.sop)
        except _RETRIEVE_ERRORS as exc:  # a truncated body fails to parse: ValueError/EOFError from pydicom
            return _Fetched(0, 1, explain(exc, "retrieve"))
        why = self._check_and_stage(ds, inst)
        return _Fetched(0 if why else 1, 1 if why else 0, why)

    def _fetch_series(self, series: _Series) -> _Fetched:
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
                why = self._check_and_stage(ds, _Instance(series.study, series.uid, sop))
                done.n_fetched += 0 if why else 1
                done.n_failed += 1 if why else 0
                done.reason = done.reason or why
                have.add(sop)
        except _RETRIEVE_ERRORS as exc:
            done.reason = done.reason or explain(exc, "retrieve (whole series)")
        if len(have) < series.size:  # the stream ended early (Orthanc cuts it at an unreadable file)
            self._fetch_rest(series, have, done)
        return done

    def _fetch_rest(self, series: _Series, have: set[str], done: _Fetched) -> None:
        """After a short series retrieve: list the series by its WADO-RS metadata (not capped as QIDO
        is) and retrieve the missing instances one by one, so only the unreadable ones fail."""
        try:
            items = self.client.retrieve_series_metadata(series.study, series.uid)
        except _RETRIEVE_ERRORS as exc:
            done.n_failed += series.size - len(have)
            done.reason = done.reason or explain(exc, "series metadata")
            return
        for sop in sorted({_value(item, _SOP_UID) for item in items} - have - {""}):
            got = self._fetch(_Instance(series.study, series.uid, sop))
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

    def _plan(self, study: str, modality: str, row: StudyPull) -> list[_Series] | None:
        """List the study's series; None (and ``row`` says why) when it cannot be pulled."""
        try:
            series = _list_series(self.client, study, modality)
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

    def _tasks(self, row: StudyPull, series: Sequence[_Series]) -> list[tuple[StudyPull, int, Callable[[], _Fetched]]]:
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

    def _short(self, row: StudyPull, series: Sequence[_Series]) -> str:
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
        plans: list[tuple[StudyPull, str, list[_Series]]] = []
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
