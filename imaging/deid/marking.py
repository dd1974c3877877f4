"""What a de-identified dataset says about itself: the PS3.3 C.7.1.1 attributes and a matching file meta."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from imaging.deid.options import DeidOptions
from imaging.deid.plan import SUPPORTED_OPTIONS
from imaging.deid.profile import BASIC_PROFILE_CODE, OPTION_CODES, Option


def mark_deidentified(ds: Dataset, options: DeidOptions) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), temporal flag (PS3.3 C.7.1.1)."""
    enabled = options.enabled() & SUPPORTED_OPTIONS
    codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[o] for o in Option if o in enabled]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ["imaging deid: PS3.15 E.1 Basic Profile"] + [
        m[:64] for _c, m in codes[1:]
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if options.retain_longitudinal_full_dates:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif options.retain_longitudinal_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


def rebuilt_file_meta(ds: Dataset) -> FileMetaDataset:
    old = ds.file_meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(
        str(ds.get("SOPClassUID", old.get("MediaStorageSOPClassUID")))
    )
    meta.MediaStorageSOPInstanceUID = UID(str(ds.get("SOPInstanceUID", "")))
    meta.TransferSyntaxUID = UID(str(old.get("TransferSyntaxUID") or _implied_syntax(ds)))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMAGING_DEID"
    return meta


def _implied_syntax(ds: Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
