"""QIDO-RS listing for a pull: studies matching a query, each study's series and instances, all pages.

Archives cap QIDO answers without saying so (Orthanc's ``LimitFindInstances``: 51 of a
140-slice series), so each series carries the count the archive keeps itself
(NumberOfSeriesRelatedInstances) beside what was listed; a short series list is replaced
by the study's WADO-RS metadata. Retrieval is :mod:`imaging.dicomweb.pull`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from dicomweb_client.api import DICOMwebClient

log = logging.getLogger(__name__)

# DICOM JSON tags (PS3.18 F.2): QIDO answers are keyed by tag, not keyword.
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
N_STUDY_SERIES, N_SERIES_INST = "00201206", "00201209"  # NumberOfStudyRelatedSeries, NumberOfSeriesRelatedInstances


def tag_value(item: Mapping[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON item, '' when absent."""
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


@dataclass(frozen=True)
class InstanceRef:
    """One instance to retrieve, by its three UIDs."""

    study: str
    series: str
    sop: str


@dataclass
class SeriesToPull:
    """One series to pull: what QIDO listed of it and how many instances the archive says it holds."""

    study: str
    uid: str
    expected: int | None  # NumberOfSeriesRelatedInstances; None when the archive does not say
    listed: list[InstanceRef]

    @property
    def capped(self) -> bool:
        """The listing stopped short of the count (the archive caps QIDO answers): retrieve the whole series."""
        return self.expected is not None and len(self.listed) < self.expected

    @property
    def size(self) -> int:
        return max(self.expected or 0, len(self.listed))


PAGE = 500


def all_pages(search: Callable[..., list[dict[str, Any]]], tag: str) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, page by page.

    Hand-written because dicomweb-client's ``get_remaining=True`` loops forever on
    servers that ignore ``offset`` (Orthanc 1.10's plugin): stop on a short page or
    on a page that brings nothing new.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page = search(limit=PAGE, offset=len(out))
        new = [item for item in page if tag_value(item, tag) not in seen]
        seen.update(tag_value(item, tag) for item in new)
        out += new
        if len(page) < PAGE or not new:
            return out


def _count(item: Mapping[str, Any], tag: str) -> int | None:
    """An ``IS`` count of a QIDO answer (``NumberOf...Related...``), None when absent or unreadable."""
    try:
        return int(tag_value(item, tag))
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
    found = all_pages(lambda **kw: client.search_for_studies(search_filters=query.filters(),
                                                              fields=["StudyInstanceUID"], **kw), STUDY_UID)
    return sorted({tag_value(s, STUDY_UID) for s in found} - {""})


def _series_count(client: DICOMwebClient, study: str) -> int | None:
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study},
                                      fields=["NumberOfStudyRelatedSeries"])
    return _count(found[0], N_STUDY_SERIES) if found else None


def _series_from_metadata(client: DICOMwebClient, study: str, modality: str) -> list[SeriesToPull]:
    """Every series of ``study`` from its WADO-RS metadata, which archives do not cap as they cap QIDO."""
    by_series: dict[str, list[InstanceRef]] = {}
    for item in client.retrieve_study_metadata(study):
        if modality and tag_value(item, MODALITY).upper() != modality.upper():
            continue
        uid = tag_value(item, SERIES_UID)
        by_series.setdefault(uid, []).append(InstanceRef(study, uid, tag_value(item, SOP_UID)))
    return [SeriesToPull(study, uid, len(insts), insts) for uid, insts in sorted(by_series.items())]


def list_series(client: DICOMwebClient, study: str, modality: str) -> list[SeriesToPull]:
    """The series of ``study`` to pull, each with its listed instances and its count from the archive.

    Archives cap QIDO answers (Orthanc's ``LimitFindResults``/``LimitFindInstances``, a PACS's
    maximum results) without saying so: the counts the archive computes itself
    (NumberOfStudyRelatedSeries, NumberOfSeriesRelatedInstances) tell a short answer apart.
    """
    found = all_pages(lambda **kw: client.search_for_series(
        study_instance_uid=study, fields=["Modality", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"],
        **kw), SERIES_UID)
    total = _series_count(client, study)
    if total is not None and len({tag_value(s, SERIES_UID) for s in found}) < total:
        log.info("the archive listed %d of %d series of a study: listing it from its metadata", len(found), total)
        return _series_from_metadata(client, study, modality)
    if modality:
        found = [s for s in found if tag_value(s, MODALITY).upper() == modality.upper()]
    out = []
    for s in found:
        uid = tag_value(s, SERIES_UID)
        listed = all_pages(partial(client.search_for_instances, study_instance_uid=study, series_instance_uid=uid,
                                    fields=["SOPInstanceUID"]), SOP_UID)
        out.append(SeriesToPull(study, uid, _count(s, N_SERIES_INST), [InstanceRef(study, uid, tag_value(i, SOP_UID))
                                                                 for i in listed]))
    return out
