"""The DICOM SEG lands on the source pixels: axial, oblique, tilted CT, feet-first, multi-frame.

Sources are real DICOM written with pydicom; the mask is a world-space sphere on a
RAS NIfTI grid. Each SEG is read back with pydicom (frame by frame) and highdicom
and checked against an independent sampling of the NIfTI at the SEG frames' own
geometry, and against the referenced source instance's position.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaging.deid.seg_header import header_deid
from imaging.dicom.seg import write_seg
from imaging.dicom.seg_read import read_seg_frames
from imaging.dicom.source_frames import load_source, sample_labels
from imaging.keys import Pseudonymizer

CANARY = "CANARYxPHI"
CODES = {"liver": {"category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
                   "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
                   "display_lab": [64.0, 26.0, 28.0]},
         "spleen": {"category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
                    "type": {"value": "78961009", "scheme": "SCT", "meaning": "Spleen"}}}
PSEUDO = Pseudonymizer(b"unit-test-secret-0123456789")


def _rot(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def source_geometry(kind: str, n: int = 12, rows: int = 20, cols: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """(IPP, IOP) per slice, in LPS, for a named tricky case, centred near the origin."""
    x, y, normal, step = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), 2.5
    if kind == "oblique":
        r = _rot(0, 20) @ _rot(2, 15)
        x, y, normal = r @ x, r @ y, r @ normal
    if kind == "feet_first":  # FFS: rows run patient-left to right, slices from the feet
        x, normal = -x, -normal
    if kind == "decubitus":
        x, y = np.array([0, 1.0, 0]), np.array([-1.0, 0, 0])
    if kind == "tilt":  # gantry tilt: planes rotate about x, slices still step along z
        y = np.array([0, np.cos(np.deg2rad(15)), -np.sin(np.deg2rad(15))])
    centre = -(cols * 1.5 * x + rows * 1.5 * y) / 2
    out = []
    for k in range(n):
        ipp = centre + (k - n / 2) * step * normal
        out.append((ipp, np.concatenate([x, y])))
    return out


def _base(sop_class: str, study: str, series: str, frame_of_ref: str, patient: str = "") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.PatientID, ds.PatientName = f"PID{CANARY}{patient}", f"Doe^{CANARY}"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240102", "101010", f"ACC{CANARY}"
    ds.StudyID, ds.ReferringPhysicianName, ds.StudyDescription = "1", f"Dr^{CANARY}", f"desc {CANARY}"
    ds.Modality, ds.SeriesNumber, ds.Manufacturer = "CT", 3, "synthetic"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    return ds


def phantom_hu(lps: np.ndarray) -> np.ndarray:
    """CT numbers of a world-space phantom: a 12 mm ball of 200 HU in -500 HU."""
    return np.where(np.linalg.norm(lps - [-3, 2, 1], axis=-1) < 12, 200, -500).astype(np.int16)


def _plane_pixels(ipp: np.ndarray, iop: np.ndarray, rows: int, cols: int, spacing: float = 1.5) -> bytes:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = ipp + c[..., None] * spacing * iop[:3] + r[..., None] * spacing * iop[3:]
    return phantom_hu(lps).tobytes()


def write_source(folder: Path, kind: str, rows: int = 20, cols: int = 24, patient: str = "") -> Path:
    """Write the source series of ``kind`` and the private sources JSON; return the JSON path.

    Pixels sample :func:`phantom_hu` at each pixel's own position, so ingest of
    these series gives a volume whose content is known in world coordinates.
    """
    folder.mkdir(parents=True, exist_ok=True)
    geoms = source_geometry(kind, rows=rows, cols=cols)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    files, frames = [], []
    if kind == "multiframe":
        ds = _base(EnhancedCTImageStorage, study, series, frame_of_ref, patient)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(geoms)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
        shared = Dataset()
        pm, po = Dataset(), Dataset()
        pm.PixelSpacing, pm.SliceThickness = [1.5, 1.5], 2.5
        po.ImageOrientationPatient = [float(v) for v in geoms[0][1]]
        shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
        ds.SharedFunctionalGroupsSequence = [shared]
        per = []
        for ipp, _ in reversed(geoms):  # frames stored head to feet: file order != volume order
            item, pp = Dataset(), Dataset()
            pp.ImagePositionPatient = [float(v) for v in ipp]
            item.PlanePositionSequence = [pp]
            per.append(item)
        ds.PerFrameFunctionalGroupsSequence = per
        ds.PixelData = b"".join(_plane_pixels(ipp, geoms[0][1], rows, cols) for ipp, _ in reversed(geoms))
        path = folder / "mf.dcm"
        ds.save_as(path, enforce_file_format=True)
        files = [str(path)]
        frames = [[0, len(geoms) - k] for k in range(len(geoms))]
    else:
        order = list(range(len(geoms)))[::-1]  # instance numbers reversed vs. position
        for k in order:
            ipp, iop = geoms[k]
            ds = _base(CTImageStorage, study, series, frame_of_ref, patient)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [float(v) for v in ipp], [float(v) for v in iop]
            ds.PixelSpacing, ds.SliceThickness, ds.Rows, ds.Columns = [1.5, 1.5], 2.5, rows, cols
            ds.PixelData = _plane_pixels(ipp, iop, rows, cols)
            path = folder / f"im{k:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(str(path))
        frames = [[i, 1] for i in range(len(files))]
    spec = {"files": files, "frames": frames, "series_instance_uid": series, "study_instance_uid": study}
    out = folder / "sources.json"
    out.write_text(json.dumps(spec))
    return out


def nifti_mask(shape: tuple[int, int, int] = (30, 30, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A RAS grid (1.2 x 1.2 x 1.6 mm) around the origin with two spheres (labels 1 and 3)."""
    affine = np.diag([1.2, 1.2, 1.6, 1.0])
    affine[:3, 3] = -np.asarray(shape) * np.array([1.2, 1.2, 1.6]) / 2
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    labels = np.zeros(shape, np.uint8)
    labels[np.linalg.norm(ras - [3, -2, 1], axis=-1) < 8] = 1
    labels[np.linalg.norm(ras - [-9, 6, -4], axis=-1) < 4] = 3
    return labels, affine


def _expected(frame_pos, frame_ori, spacing, rows, cols, labels, affine) -> np.ndarray:
    """Independent sampling with nibabel: pixel centres of a SEG frame -> NIfTI voxel, nearest."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = frame_pos + c[..., None] * spacing[1] * frame_ori[:3] + r[..., None] * spacing[0] * frame_ori[3:]
    ras = lps * np.array([-1, -1, 1])
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), ras)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < labels.shape), axis=-1)
    out = np.zeros((rows, cols), labels.dtype)
    out[ok] = labels[tuple(ijk[ok].T)]
    return out


@pytest.mark.parametrize("kind", ["axial", "oblique", "tilt", "feet_first", "decubitus", "multiframe"])
@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_seg_frames_match_source_and_nifti(tmp_path: Path, kind: str, seg_type: str) -> None:
    src_json = write_source(tmp_path / "src", kind)
    labels, affine = nifti_mask()
    source = load_source(src_json)
    result = write_seg(tmp_path / "seg.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                       algorithm_name="unet", algorithm_version="3", identity="source",
                       segmentation_type=seg_type)
    assert result is not None and result.segments == {1: "liver", 2: "spleen"}
    # Source frame (sop uid, frame number) -> its position, from the source files themselves.
    src_pos = {}
    for i, f in source.frames:
        g = source.geometry(i, f)
        src_pos[(str(source.headers[i].SOPInstanceUID), f)] = g.ipp
    frames = read_seg_frames(result.path)
    assert frames, "no frames written"
    seen = {}
    for fr in frames:
        key = (fr.referenced_sop_instance_uid, fr.referenced_frame or 1)
        assert key in src_pos, f"SEG frame references unknown source {key}"
        np.testing.assert_allclose(fr.position, src_pos[key], atol=1e-4)
        exp = _expected(fr.position, fr.orientation, fr.spacing, fr.mask.shape[0], fr.mask.shape[1], labels, affine)
        if seg_type == "BINARY":
            want = (exp == {1: 1, 2: 3}[fr.segment_number]).astype(np.uint8)
            assert np.array_equal(fr.mask, want), f"frame at {fr.position} differs"
            seen[(key, fr.segment_number)] = int(want.sum())
        else:
            assert np.array_equal(fr.mask, np.select([exp == 1, exp == 3], [1, 2], 0))
            seen[(key, 0)] = int((exp > 0).sum())
    # Omitted frames are exactly the empty ones: every non-empty source plane is in the SEG.
    for (uid, f), _ in src_pos.items():
        idx = next(i for i, h in enumerate(source.headers) if str(h.SOPInstanceUID) == uid)
        plane = sample_labels(labels, affine, source.geometry(idx, f))
        if seg_type == "BINARY":
            for number, value in ((1, 1), (2, 3)):
                assert seen.get(((uid, f), number), 0) == int((plane == value).sum())
        else:
            assert seen.get(((uid, f), 0), 0) == int((plane > 0).sum())
    # highdicom reads it back and resolves the same source references.
    seg = hd.seg.segread(result.path)
    assert {s[2] for s in seg.get_source_image_uids()} == {str(h.SOPInstanceUID) for h in source.headers}
    assert seg.FrameOfReferenceUID == source.headers[0].FrameOfReferenceUID


def test_seg_deidentified_identity(tmp_path: Path) -> None:
    src_json = write_source(tmp_path / "src", "axial")
    labels, affine = nifti_mask()
    source = load_source(src_json)
    res = write_seg(tmp_path / "seg.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                    algorithm_name="unet", algorithm_version="3", pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO))
    assert res is not None
    ds = pydicom.dcmread(res.path)
    h = source.headers[0]
    assert ds.PatientID == PSEUDO.pseudo_id(str(h.PatientID), "subject", "SUBJ") == str(ds.PatientName)
    assert ds.StudyInstanceUID == PSEUDO.uid(h.StudyInstanceUID)
    assert ds.FrameOfReferenceUID == PSEUDO.uid(h.FrameOfReferenceUID)
    refs = {r.SeriesInstanceUID for r in ds.ReferencedSeriesSequence}
    assert refs == {PSEUDO.uid(h.SeriesInstanceUID)}
    mapped = {PSEUDO.uid(str(x.SOPInstanceUID)) for x in source.headers}
    assert {f.referenced_sop_instance_uid for f in read_seg_frames(res.path)} <= mapped
    raw = res.path.read_bytes()
    assert CANARY.encode() not in raw and b"19700101" not in raw
    codes_ = {str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in ds.SegmentSequence}
    assert codes_ == {"10200004", "78961009"}
    assert ds.SegmentSequence[0].SegmentAlgorithmName == "unet"
    assert len(ds.SegmentSequence[0].RecommendedDisplayCIELabValue) == 3
    # The SEG carries the same identifiers as `imaging deid`'s copy of the study.
    from imaging.deid.apply import deidentify_dataset

    deid = deidentify_dataset(pydicom.dcmread(source.paths[0], stop_before_pixels=True), PSEUDO)
    assert deid is not None
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID"):
        assert str(ds.get(kw)) == str(deid.get(kw)), kw


def test_seg_empty_mask_writes_nothing(tmp_path: Path) -> None:
    source = load_source(write_source(tmp_path / "src", "axial"))
    labels, affine = nifti_mask()
    assert write_seg(tmp_path / "seg.dcm", source, np.zeros_like(labels), affine, {1: "liver"}, CODES,
                     algorithm_name="unet", algorithm_version="1", identity="source") is None
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize("kind", ["axial", "oblique", "feet_first"])
def test_seg_dcmqi_geometry_matches_source(tmp_path: Path, kind: str) -> None:
    """dcmqi (the reader 3D Slicer uses) converts the SEG onto the source geometry."""
    tool = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    sitk = pytest.importorskip("SimpleITK")
    source = load_source(write_source(tmp_path / "src", kind))
    labels, affine = nifti_mask()
    res = write_seg(tmp_path / "seg.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                    algorithm_name="unet", algorithm_version="1", identity="source")
    assert res is not None
    out = tmp_path / "dcmqi"
    out.mkdir()
    subprocess.run([tool, "--inputDICOM", str(res.path), "--outputDirectory", str(out), "-t", "nifti"],
                   check=True, capture_output=True)
    images = sorted(out.glob("*.nii.gz"))
    assert len(images) == 2  # one per segment
    img = sitk.ReadImage(str(images[0]))
    g = [source.geometry(i, f) for i, f in source.frames]
    iop = g[0].iop
    normal = np.cross(iop[:3], iop[3:])
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-4)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-4)
    assert abs(abs(float(direction[:, 2] @ normal)) - 1) < 1e-4
    np.testing.assert_allclose(img.GetSpacing()[:2], g[0].spacing[::-1], atol=1e-4)
    # dcmqi's origin is one of the source slice positions and every voxel of the mask
    # that dcmqi wrote lies on a source pixel whose sampled label is that segment.
    origins = np.array([x.ipp for x in g])
    assert np.min(np.linalg.norm(origins - np.asarray(img.GetOrigin()), axis=1)) < 1e-3
    arr = sitk.GetArrayFromImage(img)  # (k, r, c)
    k, r, c = np.nonzero(arr)
    assert len(k) > 0
    pts = [img.TransformIndexToPhysicalPoint((int(ci), int(ri), int(ki))) for ki, ri, ci in zip(k, r, c, strict=True)]
    ras = np.asarray(pts) * np.array([-1, -1, 1])
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), ras)).astype(int)
    assert np.all(labels[tuple(ijk.T)] == 1)
    total = sum(int((sample_labels(labels, affine, x) == 1).sum()) for x in g)
    assert len(k) == total
