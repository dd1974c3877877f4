"""Store DICOM objects (the SEGs inference writes) back to the archive: STOW-RS, or DIMSE C-STORE.

No duplicates on a re-run, twice over: the SEG's SOPInstanceUID is derived from
the source series and the model version (:func:`imaging.dicom.seg.write_seg`), and
before storing, the server is asked (QIDO-RS) whether it already holds that
instance; if so nothing is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from imaging.dicomweb.client import explain

log = logging.getLogger(__name__)


@dataclass
class PushResult:
    """``status``: stored | present (already on the server) | error, with the reason."""

    status: str
    reason: str = ""


def on_server(client: DICOMwebClient, study: str, series: str, sop: str) -> bool:
    """Whether the server already holds this instance (QIDO-RS at instance level)."""
    found = client.search_for_instances(study_instance_uid=study, series_instance_uid=series,
                                        search_filters={"SOPInstanceUID": sop}, fields=["SOPInstanceUID"])
    return any(str((f.get("00080018") or {}).get("Value", [""])[0]) == sop for f in found)


def stow(client: DICOMwebClient, path: Path, what: str) -> PushResult:
    """STOW-RS the DICOM file at ``path`` unless the server already has it.

    ``what`` names the object in the reason (a series key, never a UID). Never raises for
    a server-side failure: the result says what went wrong.
    """
    ds = pydicom.dcmread(path)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    try:
        if on_server(client, study, series, sop):
            return PushResult("present", "already on the server")
        response = client.store_instances(datasets=[ds], study_instance_uid=study)
    except requests.RequestException as exc:
        return PushResult("error", explain(exc, f"{what}: store"))
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reason = getattr(failed[0], "FailureReason", "unknown")
        return PushResult("error", f"{what}: store refused by the server (FailureReason {reason})")
    return PushResult("stored")


def c_store(path: Path, host: str, port: int, called_aet: str, calling_aet: str = "IMAGING",
            what: str = "") -> PushResult:
    """DIMSE C-STORE of one file to an AE (archives without DICOMweb); pynetdicom does the protocol."""
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, int(port), ae_title=called_aet)
    if not assoc.is_established:
        return PushResult("error", f"{what}: no DICOM association with {called_aet}@{host}:{port}")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == 0x0000:
        return PushResult("stored")
    return PushResult("error", f"{what}: C-STORE status 0x{code & 0xFFFF:04X}")
