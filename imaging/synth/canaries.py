"""PHI canaries: recognisable fake identifiers written into every PHI attribute.

Every textual PHI value the generator writes contains :data:`CANARY_TOKEN` plus a
field tag (``ZZPHI^NAME^P0001``), so a later stage (de-identification, ingest
sidecars, MLflow artifacts, logs) can prove that nothing leaked by grepping for the
token. Dates and times cannot carry the token; they are distinctive per subject
and listed in the manifest's ``canaries`` list next to the strings. UIDs are listed
separately under the manifest's ``uids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

CANARY_TOKEN = "ZZPHI"

# Private block: (0009,00xx) reserved by this creator, element 0x01 carries a canary.
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = f"{CANARY_TOKEN} PRIVATE"
# A second, vendor-looking block with a canary too: real exports carry many.
PRIVATE_CREATOR_2 = "ACME 1.0"
PRIVATE_GROUP_2 = 0x0029

# Textual attributes that carry the token (keyword -> field tag used in the value).
TEXT_FIELDS: dict[str, str] = {
    "PatientName": "NAME",
    "PatientID": "PID",
    "OtherPatientIDs": "OPID",
    "IssuerOfPatientID": "ISSUER",
    "PatientAddress": "ADDR",
    "PatientTelephoneNumbers": "TEL",
    "PatientComments": "PCOMM",
    "AdditionalPatientHistory": "HIST",
    "AccessionNumber": "ACC",
    "InstitutionName": "INST",
    "InstitutionAddress": "IADDR",
    "InstitutionalDepartmentName": "DEPT",
    "ReferringPhysicianName": "REFPHYS",
    "PerformingPhysicianName": "PERFPHYS",
    "OperatorsName": "OPER",
    "RequestingPhysician": "REQPHYS",
    "StudyDescription": "STUDYDESC",
    "StudyID": "SID",
    "StationName": "STN",
    "DeviceSerialNumber": "SN",
    "ImageComments": "COMM",
}
# Attributes whose value is per series (built from the series' own description).
SERIES_TEXT_FIELDS = ("SeriesDescription",)
DATE_FIELDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
TIME_FIELDS = ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime")
NESTED_FIELDS = (
    "RequestAttributesSequence>RequestedProcedureDescription",
    "RequestAttributesSequence>ScheduledProcedureStepDescription",
    "ProcedureCodeSequence>CodeMeaning",
)
PRIVATE_FIELDS = (f"{PRIVATE_CREATOR}>01", f"{PRIVATE_CREATOR_2}>10", f"{PRIVATE_CREATOR}>03>{PRIVATE_CREATOR}>01")
# (0009,xx03): a private sequence whose item holds a canary (public and private):
# a safe-private list that keeps the sequence must still clean inside it.
PRIVATE_SEQUENCE_ELEMENT = 0x03


def patient_folder(phi: SubjectPhi) -> str:
    """The export folder of a patient, named after the patient as many PACS exports do.

    ``ZZDOE001``: a canary without the token (so only the audit's folder-name
    needles, or the manifest, find it), still a valid DICOM File ID component
    (8 characters, upper case) for the DICOMDIR.
    """
    return f"ZZDOE{phi.index % 1000:03d}"


def preamble(patient_id: str) -> bytes:
    """A 128-byte file preamble carrying a canary (some exporters write the patient there)."""
    return preamble_text(patient_id).encode("ascii").ljust(128, b"\0")[:128]


def preamble_text(patient_id: str) -> str:
    return f"{CANARY_TOKEN} PREAMBLE {patient_id}"


def _b36(n: int, width: int = 3) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out


def _short(tag: str, subject: int, seed: int) -> str:
    """A value for short VRs (SH: 16 chars, no '^'): ``ZZPHIPID0000001``.

    The seed is part of every ID (3 base-36 digits), so exports made with different
    seeds never share a patient ID or accession number.
    """
    return f"{CANARY_TOKEN}{tag}{_b36(seed % 36**3)}{subject:04d}"[:16]


@dataclass
class SubjectPhi:
    """The PHI values of one synthetic subject.

    Attributes:
        index: subject number (1-based).
        text: keyword -> value for :data:`TEXT_FIELDS`.
        dates: keyword -> DA value (every date is distinctive per subject).
        times: keyword -> TM value.
        age, sex, size_m, weight_kg: realistic demographics (not canaries).
    """

    index: int
    seed: int
    text: dict[str, str]
    dates: dict[str, str]
    times: dict[str, str]
    age: str
    sex: str
    size_m: float
    weight_kg: float
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return self.text["PatientID"]

    def series_description(self, what: str) -> str:
        """A SeriesDescription (LO, 64 chars) carrying the token plus what it is."""
        return f"{CANARY_TOKEN}^SERDESC^{self.tag} {what}"[:64]

    @property
    def tag(self) -> str:
        """``S<seed>P<subject>``: the subject's mark inside longer canary values."""
        return f"S{self.seed}P{self.index:04d}"

    def values(self) -> list[str]:
        """Every PHI string/date/time of this subject (series descriptions excluded)."""
        out = list(self.text.values()) + list(self.dates.values()) + list(self.times.values())
        return out + list(self.extra.values())


# Identifiers get the compact form (IDs look like IDs, and SH holds only 16 characters).
_SHORT_VR = {k for k in TEXT_FIELDS if dictionary_VR(k) == "SH"} | {"PatientID", "OtherPatientIDs"}
_PN = {k for k in TEXT_FIELDS if dictionary_VR(k) == "PN"}


def subject_phi(index: int, seed: int, rng_value: float) -> SubjectPhi:
    """Build the canary values of subject ``index`` (1-based).

    Args:
        index: subject number.
        seed: export seed (shifts the dates so two exports differ).
        rng_value: a number in [0, 1) drawn from the subject's generator (demographics).
    """
    mark = f"S{seed}P{index:04d}"
    text: dict[str, str] = {}
    for key, tag in TEXT_FIELDS.items():
        if key in _SHORT_VR:
            text[key] = _short(tag, index, seed)
        elif key in _PN:
            text[key] = f"{CANARY_TOKEN}^{tag}^{mark}"
        else:
            text[key] = f"{CANARY_TOKEN} {tag} {mark}"
    month = 1 + (index + seed) % 12
    day = 1 + (7 * index + seed) % 27
    dates = {
        "PatientBirthDate": f"19{31 + index % 60:02d}{month:02d}{day:02d}",
        "StudyDate": f"2019{month:02d}{day:02d}",
        "SeriesDate": f"2019{month:02d}{day:02d}",
        "AcquisitionDate": f"2019{month:02d}{day:02d}",
        "ContentDate": f"2019{month:02d}{day:02d}",
    }
    hh = 7 + index % 10
    times = {
        "StudyTime": f"{hh:02d}1317.{index:06d}",
        "SeriesTime": f"{hh:02d}1419.{index:06d}",
        "AcquisitionTime": f"{hh:02d}1521.{index:06d}",
        "ContentTime": f"{hh:02d}1623.{index:06d}",
    }
    extra = {
        "private1": f"{CANARY_TOKEN}^PRIV^{mark}",
        "private2": f"{CANARY_TOKEN}^ACME^{mark}",
        "RequestedProcedureDescription": f"{CANARY_TOKEN}^REQPROC^{mark}",
        "ScheduledProcedureStepDescription": f"{CANARY_TOKEN}^SPSDESC^{mark}",
        "CodeMeaning": f"{CANARY_TOKEN}^PROCCODE^{mark}",
        "RequestedProcedureID": _short("RPID", index, seed),
        "private_seq": f"{CANARY_TOKEN}^PRIVSEQ^{mark}",
        "private_seq_public": f"{CANARY_TOKEN} PRIVSEQ COMMENT {mark}",
    }
    age_years = 30 + int(rng_value * 50)
    sex = "F" if index % 2 else "M"
    return SubjectPhi(
        index=index,
        seed=seed,
        text=text,
        dates=dates,
        times=times,
        age=f"{age_years:03d}Y",
        sex=sex,
        size_m=round(1.60 + 0.25 * rng_value, 2),
        weight_kg=round(55 + 40 * rng_value, 1),
        extra=extra,
    )


def apply_phi(ds: Dataset, phi: SubjectPhi, series_what: str) -> None:
    """Write the subject's PHI (and demographics) into ``ds`` in place.

    Args:
        ds: the dataset of one instance.
        phi: the subject's canaries.
        series_what: plain description of the series (``"CT ABDOMEN PV"``), appended
            to the canary SeriesDescription.
    """
    for key, value in phi.text.items():
        setattr(ds, key, value)
    for key, value in phi.dates.items():
        setattr(ds, key, value)
    for key, value in phi.times.items():
        setattr(ds, key, value)
    ds.SeriesDescription = phi.series_description(series_what)
    ds.PatientAge = phi.age
    ds.PatientSex = phi.sex
    ds.PatientSize = f"{phi.size_m:.2f}"
    ds.PatientWeight = f"{phi.weight_kg:.1f}"

    request = Dataset()
    request.RequestedProcedureDescription = phi.extra["RequestedProcedureDescription"]
    request.ScheduledProcedureStepDescription = phi.extra["ScheduledProcedureStepDescription"]
    request.RequestedProcedureID = phi.extra["RequestedProcedureID"]
    ds.RequestAttributesSequence = Sequence([request])
    code = Dataset()
    code.CodeValue = "ZZ0001"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = phi.extra["CodeMeaning"]
    ds.ProcedureCodeSequence = Sequence([code])

    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", phi.extra["private1"])
    block.add_new(0x02, "DS", "1.5")  # a harmless private number next to the canary
    item = Dataset()
    item.ImageComments = phi.extra["private_seq_public"]  # public free text inside a private item
    item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", phi.extra["private_seq"])
    block.add_new(PRIVATE_SEQUENCE_ELEMENT, "SQ", Sequence([item]))
    block2 = ds.private_block(PRIVATE_GROUP_2, PRIVATE_CREATOR_2, create=True)
    block2.add_new(0x10, "LO", phi.extra["private2"])


def subject_canaries(phi: SubjectPhi) -> list[str]:
    """Values the manifest lists for this subject (series descriptions added by the caller)."""
    # The private creator itself carries the token: a kept private block must show up.
    return phi.values() + [PRIVATE_CREATOR, patient_folder(phi), preamble_text(phi.patient_id)]
