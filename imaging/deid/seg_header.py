"""The de-identified source headers a SEG or RTSTRUCT copies, exactly as ``imaging deid`` writes them.

Moved here from :mod:`imaging.dicom.seg`: reading and writing DICOM never imports the
de-identification; the writers take :func:`header_deid`'s callable instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from imaging.deid.options import DeidOptions
from imaging.dicom.seg import _fill_type2
from imaging.keys import Pseudonymizer


def header_deid(pseudo: Pseudonymizer, options: DeidOptions | None = None) -> Callable[[Sequence[Dataset]], list[Dataset]]:
    """The ``header_deid`` argument of :func:`imaging.dicom.seg.write_seg` and ``write_rtstruct``."""
    return partial(deidentified_headers, pseudo=pseudo, options=options)


# Patient- and study-level attributes highdicom copies from the first source image;
# in deidentified mode all are dropped and only the keyed pseudonyms below are set.
def _patient_study_keywords() -> set[str]:
    # The same tables highdicom copies by (every module of the Patient and Study IEs).
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map

    modules = {m["key"] for iod in get_iod_module_map().values() for m in iod if m["ie"] in ("Patient", "Study")}
    attrs = get_module_attribute_map()
    return {str(it["keyword"]) for key in modules for it in attrs.get(key, []) if len(it["path"]) == 0}


_PATIENT_STUDY = _patient_study_keywords()
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def deidentified_header(ds: Dataset, pseudo: Pseudonymizer, options: DeidOptions | None = None) -> Dataset:
    """A metadata copy of ``ds`` de-identified exactly as ``imaging deid`` does it.

    Running the de-identification itself (not a re-implementation) keeps the SEG's
    patient ID, dates and every UID identical to the de-identified copy of the study.
    A series ``imaging deid`` withholds (burned-in annotation) still gets the same
    keyed IDs and UIDs here, with every other patient/study attribute dropped.
    ``options`` are the configured ``deid_options`` (the same as ``imaging deid``'s).
    """
    from imaging.deid.apply import deidentify_dataset, shift_da, truncate_tm
    from imaging.deid.elements import map_uid
    from imaging.keys import subject_identity

    header = copy.deepcopy(ds)  # deid works in place; the source header stays as read
    header.pop("PixelData", None)
    out = deidentify_dataset(header, pseudo, options)
    if out is None:
        out = Dataset()
        for elem in ds:
            if elem.keyword not in _PATIENT_STUDY and elem.tag.group != 0x0010 and elem.keyword != "PixelData":
                out.add(copy.deepcopy(elem))
        identity, _ = subject_identity(str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "")),
                                       str(ds.get("StudyInstanceUID", "")))
        out.PatientID = pseudo.pseudo_id(identity, "subject", options.subject_prefix if options else "SUBJ")
        out.PatientName = out.PatientID
        out.StudyDate = shift_da(str(ds.get("StudyDate", "")), pseudo.date_shift_days(identity))
        out.StudyTime = truncate_tm(str(ds.get("StudyTime", "")))
        for kw in _UID_KEYWORDS:
            if kw in ds:
                setattr(out, kw, map_uid(str(ds.get(kw)), pseudo, options))
        out.PatientIdentityRemoved = "YES"
    return _fill_type2(out)  # ``out`` is a copy already: filled in place


# What highdicom reads from each source image after the first (the first gives the patient,
# study and equipment modules): the instance, its series and frame of reference, its plane
# (PS3.3 C.7.6.2) and size. Geometry is kept by the de-identification; the UIDs are mapped.
_PER_IMAGE_KEPT = ("SOPClassUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
                   "PixelSpacing", "SliceThickness", "SpacingBetweenSlices")
_PER_IMAGE_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def deidentified_headers(headers: Sequence[Dataset], pseudo: Pseudonymizer,
                         options: DeidOptions | None = None) -> list[Dataset]:
    """:func:`deidentified_header` of every source header as highdicom reads them, fast.

    The first header is de-identified whole (the SEG copies its patient and study
    modules). Of the others highdicom reads only the instance, series and plane:
    those attributes are copied and their UIDs mapped by the de-identification's own
    :func:`~imaging.deid.elements.map_uid`. De-identifying each slice's whole header was
    half of a SEG's writing time (a deep copy and a walk of every element per slice);
    ``tests/unit/test_deid_seg_header.py`` checks the SEG and RTSTRUCT are the same.
    """
    if not headers:
        return []
    per_image = _per_image_deidentified
    if options is not None and {kw for kw, _ in options.overrides} & {*_PER_IMAGE_KEPT, *_PER_IMAGE_UIDS}:
        per_image = deidentified_header  # an override acts on these attributes: the whole path decides
    return [deidentified_header(headers[0], pseudo, options)] + [per_image(h, pseudo, options) for h in headers[1:]]


def _per_image_deidentified(ds: Dataset, pseudo: Pseudonymizer, options: DeidOptions | None) -> Dataset:
    from imaging.deid.elements import map_uid

    out = Dataset()
    for kw in _PER_IMAGE_KEPT:
        if kw in ds:
            elem = ds[kw]  # flat values (no sequences): a new element, a copied value
            out.add(DataElement(elem.tag, elem.VR, copy.copy(elem.value)))
    for kw in _PER_IMAGE_UIDS:
        if kw in ds:
            setattr(out, kw, map_uid(str(ds[kw].value), pseudo, options))
    return out
