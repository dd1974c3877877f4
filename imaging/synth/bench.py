"""Benchmark inputs: one big CT series, or thousands of small MR files in many series.

Both write a normal export layout (``DICOM/...``) plus a ``manifest.json`` with the
same schema as :func:`imaging.synth.generate`, without DICOMDIR or labels.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaging.fsutil import atomic_write_json
from imaging.synth.build import MANIFEST, SCHEMA_VERSION, _prepare
from imaging.synth.canaries import CANARY_TOKEN
from imaging.synth.export import Export, grid_for, volume_series


def _manifest(export: Export, kind: str) -> dict[str, Any]:
    manifest = {
        "schema_version": SCHEMA_VERSION, "generator": f"imaging.synth.{kind}", "seed": export.seed,
        "subjects": len({s["subject"] for s in export.series}), "size": export.size,
        "layout": export.layout, "cases": [], "labels": {}, "label_names": None, "dicomdir": None, "non_dicom_files": [],
        "series": export.series, "canary_token": CANARY_TOKEN, "canaries": export.all_canaries(),
        "uids": sorted(export.uids), "n_files": len(export.dicom_files),
    }
    atomic_write_json(export.root / MANIFEST, manifest)
    return manifest


def write_ct_series(
    out_dir: str | Path,
    shape: tuple[int, int, int] = (512, 512, 300),
    seed: int = 0,
    pixel: float | None = None,
    step: float = 1.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one CT series of ``shape`` = (rows, columns, slices) and return its manifest.

    Args:
        out_dir: export root (must be empty unless ``overwrite``).
        shape: raster rows, columns and the number of slices.
        seed: anatomy/noise/UID seed.
        pixel: pixel size in mm (default: a 380 mm field of view).
        step: slice spacing in mm.

    Raises:
        FileExistsError: ``out_dir`` not empty and not ``overwrite``.
    """
    root = Path(out_dir)
    _prepare(root, overwrite)
    export = Export(root, int(seed), "full", "nested")
    subject = export.subject(1)
    rows, cols, n = shape
    size = pixel if pixel is not None else 380.0 / max(rows, cols)
    grid = grid_for(export, subject, "CT", rows=rows, cols=cols, n_slices=n, pixel=size, step=step)
    volume_series(export, subject, "CT", "CT", "CT", f"CT ABDOMEN {step:.1f} BENCH", grid)
    return _manifest(export, "write_ct_series")


def write_many_small_series(
    out_dir: str | Path,
    n_files: int = 2000,
    files_per_series: int = 20,
    matrix: int = 64,
    series_per_subject: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write at least ``n_files`` small MR instances in series of ``files_per_series``.

    Subjects get ``series_per_subject`` series each (alternating T1/T2), as in an
    export of many short MR exams.

    Raises:
        FileExistsError: ``out_dir`` not empty and not ``overwrite``.
        ValueError: non-positive counts.
    """
    if n_files < 1 or files_per_series < 1 or series_per_subject < 1:
        raise ValueError(f"counts must be positive: n_files={n_files}, files_per_series={files_per_series}")
    root = Path(out_dir)
    _prepare(root, overwrite)
    export = Export(root, int(seed), "small", "nested")
    n_series = math.ceil(n_files / files_per_series)
    subject = None
    for s in tqdm(range(n_series), desc="small MR series"):
        if s % series_per_subject == 0:
            subject = export.subject(s // series_per_subject + 1)
        assert subject is not None
        contrast = "T1" if s % 2 == 0 else "T2"
        grid = grid_for(export, subject, "MR", rows=matrix, cols=matrix, n_slices=files_per_series,
                        pixel=360.0 / matrix, step=6.0)
        volume_series(export, subject, "MR", "MR", contrast, f"MR AX {contrast} {s + 1}", grid)
    return _manifest(export, "write_many_small_series")


# Real Philips MR headers (nibabel's test data: an Achieva enhanced MPRAGE): the top level and the
# first frame's private classic header (2005,140F) make one classic Philips file, as Philips
# classic exports carry them, with the Real World Value Mapping at the top level.
PHILIPS_TEMPLATE = "philips_mprage.dcm.gz"
_DS_HEAD_IPP = b"\x20\x00\x32\x00DS"  # (0020,0032) ImagePositionPatient, explicit VR little endian
_ENHANCED_ONLY = (0x52009229, 0x52009230, 0x00209221, 0x00209222, 0x00289001, 0x00289002, 0x00280008,
                  0x7FE00010, 0x20051402)  # (2005,1402) holds a second copy of the classic header


def philips_classic_template() -> Any:
    """One classic Philips MR dataset (no pixels) built from the real headers of nibabel's test file.

    Raises:
        FileNotFoundError: nibabel's test data is not installed.
    """
    import gzip

    import nibabel
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

    path = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / PHILIPS_TEMPLATE
    with gzip.open(path) as fh:
        enhanced = pydicom.dcmread(fh, stop_before_pixels=True)
    frame = enhanced.PerFrameFunctionalGroupsSequence[0]
    classic = frame[0x2005140F].value[0]
    ds = Dataset()
    ds.file_meta = enhanced.file_meta
    for elem in enhanced:
        if elem.tag not in _ENHANCED_ONLY:
            ds.add(elem)
    for elem in classic:  # the classic per-frame attributes, private groups included
        ds.add(elem)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.ImageOrientationPatient = frame.PlaneOrientationSequence[0].ImageOrientationPatient
    mapping = Dataset()  # what Philips writes at the top level of every classic MR file
    mapping.LUTExplanation, mapping.LUTLabel = enhanced.LUTExplanation, enhanced.LUTLabel
    mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, 4095
    mapping.RealWorldValueIntercept = float(classic.RescaleIntercept)
    mapping.RealWorldValueSlope = float(classic.RescaleSlope)
    units = Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "1", "UCUM", "no units"
    mapping.MeasurementUnitsCodeSequence = [units]
    ds.RealWorldValueMappingSequence = [mapping]
    return ds


def write_philips_export(out_dir: str | Path, n_files: int = 7000, slices: int = 35, matrix: int = 96,
                         seed: int = 0) -> int:
    """Write ~``n_files`` classic Philips MR files (real headers, RWVM, private sequences): one 3D
    series of ``slices`` slices per study, positions and UIDs varied; returns the number written.

    Each series is encoded once by pydicom with placeholders that each slice then overwrites (UID,
    InstanceNumber, position, pixels): thousands of files in seconds. The position is written at
    its own width with its element length, as Philips writes it ("-91.39636993\\..."): a reader
    cannot count on every slice's elements sitting at the same offsets. No manifest: a benchmark
    input only.
    """
    import copy
    import io

    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    template = philips_classic_template()
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    iop = np.asarray([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    first = np.asarray([float(v) for v in template.ImagePositionPatient])
    n_pix = matrix * matrix * 2
    ph_uid, ph_number, ph_ipp = "9" * 6, "88888888", "\\".join(["+77777.777777"] * 3)
    written = 0
    for s in tqdm(range(max(1, round(n_files / slices))), desc="philips series"):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (generate_uid() for _ in range(3))
        sop_root = generate_uid(prefix=None)  # 2.25.<up to 39 digits>: room for ".1<5 digits>"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(f"{sop_root}.{ph_uid}")
        ds.PatientID = f"PHILIPS-{s // 4:05d}"
        ds.SeriesNumber = 100 * (s % 4 + 1) + 1
        ds.Rows = ds.Columns = matrix
        ds.InstanceNumber = ph_number
        ds[0x00200032].value = ph_ipp.split("\\")
        ds.add_new(0x7FE00010, "OW", bytes(n_pix))
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        data = buf.getvalue()
        holders = [(f"{sop_root}.{ph_uid}".encode(), 2), (ph_number.encode(), 1), (ph_ipp.encode(), 1)]
        assert all(data.count(h) == n for h, n in holders), "a placeholder is not unique"
        ph_value = ph_ipp.encode() + b" " * (len(ph_ipp) % 2)  # as pydicom padded it
        ipp_element = _DS_HEAD_IPP + struct.pack("<H", len(ph_value)) + ph_value
        assert data.count(ipp_element) == 1, "the position is not a top-level explicit VR element"
        origin = first + rng.uniform(-20, 20, 3)
        step = float(rng.choice([1.0, 2.0, 3.0]))
        folder = root / f"DICOM/P{s // 4:05d}/SE{s:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(slices):
            ipp = "\\".join(f"{v:.10g}" for v in origin + k * step * normal).encode()
            ipp += b" " * (len(ipp) % 2)  # even length, as DICOM pads
            out = (data[:-n_pix].replace(holders[0][0], f"{sop_root}.1{k + 1:05d}".encode())
                   .replace(holders[1][0], f"{k + 1:08d}".encode())
                   .replace(ipp_element, _DS_HEAD_IPP + struct.pack("<H", len(ipp)) + ipp))
            pixels = rng.integers(0, 4096, size=(matrix, matrix), dtype=np.uint16).tobytes()
            (folder / f"IM{k + 1:05d}").write_bytes(out + pixels)
            written += 1
    return written
