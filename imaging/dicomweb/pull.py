"""Pull studies from a DICOMweb server into a local export folder: QIDO-RS query, WADO-RS retrieve.

Layout of the export (hospital side, like any PACS export: it holds real UIDs):
``<output_dir>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Resumable and never half-written: instances are downloaded (in parallel, one
request per instance) into a staging folder beside the export
(``<output_dir>.partial``), each written atomically after it parsed as DICOM and
its SOPInstanceUID matched the request. Only when *every* instance of a study is
there does the study move into the export, so whoever reads the export (ingest)
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
    status: str = "ok"  # ok | error
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


@dataclass(frozen=True)
class _Instance:
    study: str
    series: str
    sop: str


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


def find_studies(client: DICOMwebClient, query: PullQuery) -> list[str]:
    """StudyInstanceUIDs matching ``query`` (QIDO-RS, all pages).

    Raises:
        requests.RequestException: the server is unreachable or refused the query.
    """
    found = _all_pages(lambda **kw: client.search_for_studies(search_filters=query.filters(),
                                                              fields=["StudyInstanceUID"], **kw), _STUDY_UID)
    return sorted({_value(s, _STUDY_UID) for s in found} - {""})


def _list_instances(client: DICOMwebClient, study: str, modality: str) -> tuple[list[_Instance], int]:
    series = _all_pages(lambda **kw: client.search_for_series(
        study_instance_uid=study, fields=["Modality", "SeriesInstanceUID"], **kw), _SERIES_UID)
    if modality:
        series = [s for s in series if _value(s, _MODALITY).upper() == modality.upper()]
    out = []
    for s in series:
        uid = _value(s, _SERIES_UID)
        found = client.search_for_instances(study_instance_uid=study, series_instance_uid=uid,
                                            fields=["SOPInstanceUID"])
        out += [_Instance(study, uid, _value(i, _SOP_UID)) for i in found]
    return out, len(series)


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

    def _final(self, inst: _Instance) -> Path:
        return self.out / inst.study / inst.series / f"{inst.sop}.dcm"

    def _staged(self, inst: _Instance) -> Path:
        return self.staging / inst.study / inst.series / f"{inst.sop}.dcm"

    def _fetch(self, inst: _Instance) -> str:
        """Retrieve one instance into staging; '' when ok, else why (no UID in it)."""
        try:
            ds = self.client.retrieve_instance(inst.study, inst.series, inst.sop)
        except (requests.RequestException, pydicom.errors.InvalidDicomError, ValueError, EOFError,
                OSError) as exc:  # a truncated body fails to parse: ValueError/EOFError from pydicom
            return explain(exc, "retrieve")
        if str(ds.get("SOPInstanceUID", "")) != inst.sop:
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

    def _promote(self, study: str, instances: Sequence[_Instance]) -> Path:
        """Move a complete study from staging into the export, file by file (each rename is atomic)."""
        for inst in instances:
            staged = self._staged(inst)
            if staged.is_file():
                self._final(inst).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, self._final(inst))
        shutil.rmtree(self.staging / study, ignore_errors=True)
        return self.out / study

    def pull(self, studies: Sequence[str], modality: str = "") -> PullSummary:
        """Pull each study (all series, or only ``modality``'s). Never raises for one study's failure."""
        summary = PullSummary()
        plans: list[tuple[StudyPull, str, list[_Instance]]] = []
        for study in studies:
            row = StudyPull(self.key(study))
            summary.studies.append(row)
            try:
                instances, row.n_series = _list_instances(self.client, study, modality)
            except requests.RequestException as exc:
                row.status, row.reason = "error", explain(exc, f"study {row.key}: query")
                continue
            if not instances:
                row.status = "error"
                row.reason = f"study {row.key}: no {modality + ' ' if modality else ''}instances on the server"
                continue
            row.n_instances = len(instances)
            plans.append((row, study, instances))
        todo = [(row, inst) for row, _, insts in plans for inst in insts
                if not (self._final(inst).is_file() or self._staged(inst).is_file())]
        for row, _, _insts in plans:
            row.n_present = row.n_instances - sum(1 for r, _ in todo if r is row)
        bar = tqdm(total=len(todo), unit="inst", desc="pull", disable=not self.progress, dynamic_ncols=True)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="wado") as pool:
            for (row, _), why in zip(todo, pool.map(lambda t: self._fetch(t[1]), todo), strict=True):
                bar.update(1)
                if why:
                    row.n_failed += 1
                    row.reason = row.reason or f"study {row.key}: {why}"
                else:
                    row.n_fetched += 1
        bar.close()
        for row, study, insts in plans:
            if row.n_failed:
                row.status = "error"
                row.reason += f" ({row.n_failed} of {row.n_instances} instances failed; the study stays out "
                row.reason += "of the export, a re-run fetches only what is missing)"
                log.warning("%s", row.reason)
            else:
                row.path = self._promote(study, insts)
        return summary
