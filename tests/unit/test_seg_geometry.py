"""``seg.geometry=source|regular`` on a gantry-tilted CT, read back by dcmqi and highdicom; type 2 gaps.

dcmqi (3D Slicer's SEG reader) refuses frames on tilted source slices and reads the
``regular`` SEG, whose frames lie on the (de-tilted) NIfTI grid; highdicom reads both.
Oracles: dcmqi's NIfTI output mapped through nibabel, and highdicom's decoder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from imaging.dicom.seg import write_seg
from imaging.dicom.seg_read import read_seg_frames
from imaging.dicom.source_frames import load_source
from tests.unit.test_seg_writer import CODES, _expected, nifti_mask, write_source

TOOL = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")


def _dcmqi(seg: Path, out: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir()
    return subprocess.run([TOOL, "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nifti"],
                          capture_output=True, text=True)


def _write(tmp_path: Path, geometry: str, kind: str = "tilt"):
    source = load_source(write_source(tmp_path / "src", kind))
    labels, affine = nifti_mask()
    res = write_seg(tmp_path / f"seg-{geometry}.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                    algorithm_name="unet", algorithm_version="1", identity="source", geometry=geometry)
    assert res is not None
    return source, labels, affine, res


def test_tilted_source_geometry_refused_by_dcmqi_read_by_highdicom(tmp_path: Path) -> None:
    source, labels, affine, res = _write(tmp_path, "source")
    done = _dcmqi(res.path, tmp_path / "dcmqi")
    # dcmqi 1.3 prints the error but exits 0: the message is what says it gave up.
    assert "is outside image geometry" in done.stdout + done.stderr
    seg = hd.seg.segread(res.path)
    assert seg.SegmentSequence[0].SegmentLabel == "liver"
    # every frame references a source instance and sits on its (tilted) plane
    sop = {str(h.SOPInstanceUID): source.geometry(i, 1) for i, h in enumerate(source.headers)}
    for fr in read_seg_frames(res.path):
        np.testing.assert_allclose(fr.position, sop[fr.referenced_sop_instance_uid].ipp, atol=1e-3)


def test_regular_geometry_read_by_dcmqi_and_highdicom(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    _, labels, affine, res = _write(tmp_path, "regular")
    done = _dcmqi(res.path, tmp_path / "dcmqi")
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr
    seg = pydicom.dcmread(res.path)
    for item in seg.SegmentSequence:
        value = {"liver": 1, "spleen": 3}[item.SegmentLabel]
        img = sitk.ReadImage(str(tmp_path / "dcmqi" / f"{item.SegmentNumber}.nii.gz"))
        arr = sitk.GetArrayFromImage(img)  # (k, r, c)
        k, r, c = np.nonzero(arr)
        pts = np.array([img.TransformIndexToPhysicalPoint((int(ci), int(ri), int(ki)))
                        for ki, ri, ci in zip(k, r, c, strict=True)])
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), pts * [-1, -1, 1])).astype(int)
        assert np.allclose(nib.affines.apply_affine(affine, ijk), pts * [-1, -1, 1], atol=1e-3)  # on the grid
        assert len(ijk) == int((labels == value).sum()) and np.all(labels[tuple(ijk.T)] == value)
    # highdicom's decoder: each frame equals the NIfTI slice at its position (nibabel sampling)
    for fr in read_seg_frames(res.path):
        want = _expected(fr.position, fr.orientation, fr.spacing, *fr.mask.shape, labels, affine)
        value = {1: 1, 2: 3}[fr.segment_number]
        assert np.array_equal(fr.mask, (want == value).astype(np.uint8))
    assert hd.seg.segread(res.path).number_of_segments == 2


def test_type2_absent_in_source_is_empty_and_uids_are_stable(tmp_path: Path) -> None:
    """A GE export without PatientBirthDate/ReferringPhysicianName: the SEG is written, the values empty."""
    source = load_source(write_source(tmp_path / "src", "tilt"))
    for h in source.headers:
        del h.PatientBirthDate
        del h.ReferringPhysicianName
    labels, affine = nifti_mask()
    a = write_seg(tmp_path / "a.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                  algorithm_name="unet", algorithm_version="1", identity="source")
    b = write_seg(tmp_path / "b.dcm", source, labels, affine, {1: "liver", 3: "spleen"}, CODES,
                  algorithm_name="unet", algorithm_version="1", identity="source")
    assert a is not None and b is not None
    ds = pydicom.dcmread(a.path, stop_before_pixels=True)
    assert ds.PatientBirthDate == "" and ds.PatientID == source.headers[0].PatientID
    assert "PatientBirthDate" not in source.headers[0]  # the source header is untouched
    assert (a.sop_instance_uid, a.series_instance_uid) == (b.sop_instance_uid, b.series_instance_uid)
