"""DICOM datasets for synthetic CT and MR series, written one slice at a time.

A :class:`SeriesInfo` carries everything constant over a series (UIDs, vendor,
acquisition parameters, geometry); :func:`write_slices` samples the phantom slice
by slice, encodes the pixels as a scanner would (CT: 12-bit unsigned or 16-bit
signed with RescaleIntercept -1024; MR: 12-bit unsigned), optionally compresses,
and saves each instance. Memory never holds more than one slice of pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from imaging.synth import phantom as ph
from imaging.synth.canaries import SubjectPhi, apply_phi, preamble
from imaging.synth.geometry import Grid

# Per-vendor look of a scanner: CT pixel representation and kernels, MR field strength.
VENDORS: list[dict[str, object]] = [
    {"Manufacturer": "SIEMENS", "CTModel": "SOMATOM Definition AS+", "MRModel": "Avanto",
     "kernel": "B30f", "signed": False, "field": 1.5},
    {"Manufacturer": "GE MEDICAL SYSTEMS", "CTModel": "Discovery CT750 HD", "MRModel": "SIGNA HDxt",
     "kernel": "STANDARD", "signed": True, "field": 3.0},
    {"Manufacturer": "Philips", "CTModel": "Brilliance 64", "MRModel": "Ingenia",
     "kernel": "B", "signed": False, "field": 3.0},
]
MR_PARAMS: dict[str, dict[str, object]] = {
    "T1": {"RepetitionTime": 550.0, "EchoTime": 10.0, "FlipAngle": 90.0, "ScanningSequence": "SE",
           "SequenceVariant": "SK", "EchoTrainLength": 1, "SequenceName": "se2d1"},
    "T2": {"RepetitionTime": 4200.0, "EchoTime": 95.0, "FlipAngle": 150.0, "ScanningSequence": "SE",
           "SequenceVariant": ["SK", "SP"], "EchoTrainLength": 16, "SequenceName": "tse2d1_16"},
}


def make_uid(seed: int, *parts: object) -> UID:
    """A deterministic UID from the export seed and a path of identifiers."""
    return generate_uid(entropy_srcs=[f"imaging-synth-{seed}", *map(str, parts)])


@dataclass
class SeriesInfo:
    """Everything constant over one series.

    Attributes:
        modality: "CT" or "MR".
        contrast: "CT", "T1" or "T2" (phantom intensity table).
        study_uid, series_uid, frame_uid: UIDs.
        series_number: SeriesNumber.
        what: plain description (appended to the canary SeriesDescription).
        grid: the geometry.
        position: PatientPosition.
        vendor: index into :data:`VENDORS`.
        phi: the subject's canaries.
        seed: export seed (SOP Instance UIDs derive from it).
        image_type: ImageType.
        extra: more attributes set on every instance (keyword -> value).
        table: optional intensity per tissue class overriding the contrast's table
            (contrast phases of a dynamic series).
    """

    modality: str
    contrast: str
    study_uid: str
    series_uid: str
    frame_uid: str
    series_number: int
    what: str
    grid: Grid
    position: str
    vendor: int
    phi: SubjectPhi
    seed: int
    image_type: list[str] = field(default_factory=lambda: ["ORIGINAL", "PRIMARY", "AXIAL"])
    extra: dict[str, object] = field(default_factory=dict)
    table: np.ndarray | None = None

    @property
    def sop_class(self) -> UID:
        return CTImageStorage if self.modality == "CT" else MRImageStorage

    def sop_uid(self, k: int) -> UID:
        return make_uid(self.seed, self.series_uid, "sop", k)


def new_file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    """File meta information of a natively encoded (Explicit VR Little Endian) instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def base_dataset(info: SeriesInfo) -> Dataset:
    """Header of one instance of ``info`` without per-slice attributes or pixels."""
    vendor = VENDORS[info.vendor % len(VENDORS)]
    ds = Dataset()
    ds.file_meta = new_file_meta(info.sop_class, info.sop_uid(0))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(info.image_type)
    ds.SOPClassUID = info.sop_class
    apply_phi(ds, info.phi, info.what)
    ds.Modality = info.modality
    ds.Manufacturer = vendor["Manufacturer"]
    ds.ManufacturerModelName = vendor["CTModel" if info.modality == "CT" else "MRModel"]
    ds.SoftwareVersions = "synth-1.0"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ProtocolName = f"ABDOMEN {info.what}"[:64]
    ds.PatientPosition = info.position
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = info.series_number
    ds.FrameOfReferenceUID = info.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    g = info.grid
    ds.ImageOrientationPatient = g.iop
    ds.PixelSpacing = [round(g.spacing[0], 6), round(g.spacing[1], 6)]
    ds.SliceThickness = round(g.thickness, 6)
    ds.Rows, ds.Columns = g.rows, g.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if info.modality == "CT":
        _ct_attributes(ds, vendor, g)
    else:
        _mr_attributes(ds, vendor, info.contrast)
    for key, value in info.extra.items():
        setattr(ds, key, value)
    return ds


def _ct_attributes(ds: Dataset, vendor: dict[str, object], g: Grid) -> None:
    signed = bool(vendor["signed"])
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.KVP = 120
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 500
    ds.ConvolutionKernel = vendor["kernel"]
    ds.GantryDetectorTilt = round(float(g.tilt), 4)
    ds.TableHeight = 160.0
    ds.SpiralPitchFactor = 0.8
    ds.ContrastBolusAgent = "IOHEXOL"


def _mr_attributes(ds: Dataset, vendor: dict[str, object], contrast: str) -> None:
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.MagneticFieldStrength = vendor["field"]
    ds.ImagingFrequency = round(42.577 * float(vendor["field"]), 4)  # type: ignore[arg-type]
    ds.MRAcquisitionType = "2D"
    ds.ScanOptions = ""
    ds.WindowCenter, ds.WindowWidth = 600, 1200
    for key, value in MR_PARAMS[contrast].items():
        setattr(ds, key, value)


def encode(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored pixel values for intensities ``values`` under ``ds``'s pixel module."""
    if "RescaleIntercept" in ds:
        stored = (values - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
    else:
        stored = values
    if ds.PixelRepresentation == 1:
        lo, hi = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
        return np.clip(np.rint(stored), lo, hi).astype(np.int16)
    return np.clip(np.rint(stored), 0, 2**ds.BitsStored - 1).astype(np.uint16)


def set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    """Attach native (uncompressed) pixel data."""
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OW"


def compress_lossless(ds: Dataset, stored: np.ndarray, transfer_syntax: str, path: Path) -> None:
    """Compress ``ds`` in place and check the codec gives the stored values back.

    Raises:
        RuntimeError: the encoder/decoder pair is not lossless on these pixels.
    """
    # Keep our deterministic SOP Instance UID (pydicom would draw a new random one).
    ds.compress(transfer_syntax, generate_instance_uid=False)
    decoded = ds.pixel_array
    if decoded.shape != stored.shape or not np.array_equal(decoded, stored):
        raise RuntimeError(f"'{path}': {UID(transfer_syntax).name} round trip is not lossless")


def sample_slice(phantom: ph.Phantom, grid: Grid, k: int, contrast: str,
                 rng: np.random.Generator | None, table: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Intensities (rows, cols) and labels of slice ``k`` of ``grid``."""
    tissue = phantom.tissue(grid.slice_points(k))
    return ph.intensity(tissue, contrast, rng, table), ph.labels(tissue)


@dataclass
class SliceOptions:
    """Per-series variations of how instances are written.

    Attributes:
        instance_numbers: InstanceNumber per acquisition index (default k + 1).
        transfer_syntax: compress each instance with this syntax (pydicom encoders).
        mutate: called as ``mutate(ds, k)`` before saving (tricky cases).
        index_offset: added to k for SOP Instance UIDs and default InstanceNumbers
            (several passes over one grid, e.g. the timepoints of a 4D series).
    """

    instance_numbers: list[int] | None = None
    transfer_syntax: str | None = None
    mutate: Callable[[Dataset, int], None] | None = None
    index_offset: int = 0


def write_slices(
    info: SeriesInfo,
    phantom: ph.Phantom,
    paths: list[Path],
    rng: np.random.Generator,
    options: SliceOptions | None = None,
) -> np.ndarray:
    """Write one instance per slice of ``info.grid`` to ``paths`` (acquisition order).

    Returns:
        the label volume (cols, rows, n) in the grid's sorted (k) order.
    """
    opts = options or SliceOptions()
    base = base_dataset(info)
    g = info.grid
    label_slices: list[np.ndarray] = []
    for k, path in enumerate(paths):
        values, lab = sample_slice(phantom, g, k, info.contrast, rng, info.table)
        label_slices.append(lab)
        # A shallow copy shares the template's elements (never modified: every per-slice
        # attribute below is a new element), 10x cheaper than deepcopy per file.
        ds = Dataset()
        ds.update(base)
        n = k + opts.index_offset
        ds.file_meta = new_file_meta(info.sop_class, info.sop_uid(n))
        ds.SOPInstanceUID = info.sop_uid(n)
        ds.InstanceNumber = opts.instance_numbers[k] if opts.instance_numbers else n + 1
        ds.ImagePositionPatient = g.ipp(k)
        ds.SliceLocation = round(float(g.positions[k] @ g.normal), 6)
        stored = encode(values, ds)
        set_pixels(ds, stored)
        if opts.transfer_syntax:
            compress_lossless(ds, stored, opts.transfer_syntax, path)
        if opts.mutate:
            opts.mutate(ds, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Some exporters write the patient into the preamble: so does ours (a canary).
        ds.preamble = preamble(str(ds.get("PatientID", "")))
        # Explicit VR little endian: what every syntax we write uses (a private one needs saying).
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    order = g.sorted_order()
    return np.stack([label_slices[i].T for i in order], axis=-1)
