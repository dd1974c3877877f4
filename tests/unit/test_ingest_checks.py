"""Grouping and checks: what may share a volume, cumulative spacing, tilt coverage, SEG without its source.

Expected positions come from the DICOM files themselves (read back with pydicom),
never from the planner's formulas.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import AXIAL, oblique, stack_positions, world_ramp, write_slices
from tests.unit.test_ingest_geometry import assert_matches_dicom
from tests.unit.test_ingest_inputs import keyed

PS = Pseudonymizer(b"unit-test-secret-0123456789")


def run(export: Path, tmp: Path, **kw):
    return ingest(export, tmp / "ds", PS, private_dir=tmp / "private", workers=1, progress=False, **kw)


def pixel_world(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(LPS position of every pixel centre, stored*slope+intercept) of one file, from its own tags."""
    ds = pydicom.dcmread(path)
    ipp, iop = np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float)
    sp = np.asarray(ds.PixelSpacing, float)
    rr, cc = np.mgrid[0:ds.Rows, 0:ds.Columns]
    lps = ipp + cc[..., None] * sp[1] * iop[:3] + rr[..., None] * sp[0] * iop[3:]
    return lps, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def to_voxel(img, lps: np.ndarray) -> np.ndarray:
    ras = np.concatenate([-lps[..., :2], lps[..., 2:], np.ones(lps.shape[:-1] + (1,))], axis=-1)
    return (ras @ np.linalg.inv(img.affine).T)[..., :3]


def test_different_pixel_spacing_is_never_merged(tmp_path: Path) -> None:
    uid, study = generate_uid(), generate_uid()
    a = write_slices(tmp_path / "in" / "s", stack_positions(4), series_uid=uid, study_uid=study,
                     spacing=(0.8, 0.6), names=[f"A{k}" for k in range(4)])
    b = write_slices(tmp_path / "in" / "s", stack_positions(4, origin=(-10.0, -20.0, 6.0)), series_uid=uid,
                     study_uid=study, spacing=(0.5, 0.5), names=[f"B{k}" for k in range(4)], seed=1)
    rows = [r for r in run(tmp_path / "in", tmp_path).rows if r.status == "ok"]
    assert sorted(r.spacing for r in rows) == ["0.5x0.5x2", "0.6x0.8x2"]
    for r in rows:
        assert_matches_dicom(tmp_path / "ds" / r.volume_path, a if r.spacing.startswith("0.6") else b)


def test_different_frame_of_reference_is_never_merged(tmp_path: Path) -> None:
    uid, study = generate_uid(), generate_uid()
    for n in range(2):
        write_slices(tmp_path / "in" / "s", stack_positions(3, origin=(0.0, 0.0, float(n))), series_uid=uid,
                     study_uid=study, names=[f"F{n}{k}" for k in range(3)], seed=n,
                     extra={"FrameOfReferenceUID": generate_uid()})
    rows = run(tmp_path / "in", tmp_path).rows
    assert [r.status for r in rows] == ["ok", "ok"] and {r.shape for r in rows} == {"7x6x3"}


@pytest.mark.parametrize(("col", "tag"), [("patient_id", "(0010,0020) PatientID"),
                                          ("study_uid", "(0020,000D) StudyInstanceUID")])
def test_mixed_patient_or_study_in_one_series_is_an_error_row(tmp_path: Path, col: str, tag: str) -> None:
    uid, study = generate_uid(), generate_uid()
    kw = {"patient_id": "CANARY-PID-2"} if col == "patient_id" else {"study_uid": generate_uid()}
    write_slices(tmp_path / "in" / "s", stack_positions(3), series_uid=uid, study_uid=study, names=["a", "b", "c"])
    write_slices(tmp_path / "in" / "s", stack_positions(3, origin=(0.0, 0.0, 40.0)), series_uid=uid,
                 names=["d", "e", "f"], **({"study_uid": study} | kw))
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    # The file is named by keyed hash only (folder names may be patient names).
    assert row.status == "error" and tag in row.reason and keyed("s/a") in row.reason and summary.failed
    assert "s/a" not in row.reason
    assert "CANARY" not in row.reason  # identifiers are named by tag, never by value


def test_cumulative_drift_is_not_a_regular_stack(tmp_path: Path) -> None:
    # Every gap is within 1% of the median (2.0 or 2.019 mm), yet the last slices sit ~2.9 mm
    # from where a regular stack would put them.
    z = np.concatenate([[0.0], np.cumsum([2.0] * 150 + [2.019] * 150)])
    write_slices(tmp_path / "in" / "s", [[0.0, 0.0, v] for v in z], shape=(3, 3))
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "error" and "uneven" in row.reason and "regular" in row.reason
    ok = next(r for r in run(tmp_path / "in", tmp_path / "b", uneven="resample").rows)
    assert ok.status == "ok" and ok.slice_spacing_uneven and "uneven=resample" in ok.reason
    # A constant 2.019 mm spacing is regular.
    write_slices(tmp_path / "in2" / "s", [[0.0, 0.0, 2.019 * k] for k in range(301)], shape=(3, 3))
    (reg,) = run(tmp_path / "in2", tmp_path / "c").rows
    assert reg.status == "ok" and not reg.slice_spacing_uneven and reg.spacing.endswith("x2.019")


@pytest.mark.parametrize(("iop", "sign"), [(AXIAL, 1.0), (AXIAL, -1.0), (oblique(30.0), 1.0)])
def test_tilt_output_covers_every_dicom_pixel(tmp_path: Path, iop, sign: float) -> None:
    col_dir = np.asarray(iop[3:])
    pos = stack_positions(12, iop=iop, gap=2.0, drift=sign * 0.7 * col_dir)  # 19.3 deg, 7.7 mm over the stack
    files = write_slices(tmp_path / "in" / "s", pos, iop=iop, shape=(16, 12), spacing=(1.0, 1.0),
                         world_fn=world_ramp)
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "ok" and row.tilt_deg == pytest.approx(np.degrees(np.arctan(0.7 / 2.0)), abs=0.05)
    assert "whole tilted field of view" in row.reason
    img = nib.load(tmp_path / "ds" / row.volume_path)
    data = np.asarray(img.dataobj).astype(float)
    got, want = [], []
    for s in files:
        lps, values = pixel_world(s.path)
        ijk = to_voxel(img, lps)
        # Every DICOM pixel position is inside the output grid (none cropped).
        assert np.all(ijk > -0.5 - 1e-6) and np.all(ijk < np.asarray(data.shape) - 0.5 + 1e-6)
        idx = np.rint(ijk).astype(int)
        got.append(data[idx[..., 0], idx[..., 1], idx[..., 2]].ravel())
        want.append(values.ravel())
    assert np.corrcoef(np.concatenate(got), np.concatenate(want))[0, 1] > 0.99
    refused = run(tmp_path / "in", tmp_path / "r", tilt="refuse").rows[0]
    assert refused.status == "error" and f"{row.tilt_deg} deg" in refused.reason


def _seg(srcs: list[Path], path: Path, masks: dict[str, np.ndarray]) -> None:
    descs = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n, name in enumerate(masks, start=1)]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(p) for p in srcs], pixel_array=np.stack(list(masks.values()), -1).astype(np.uint8),
        segmentation_type="BINARY", segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="t", manufacturer_model_name="t",
        software_versions="1", device_serial_number="1")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def test_seg_without_its_source_series_becomes_its_own_label_volume(tmp_path: Path) -> None:
    extra = {"FrameOfReferenceUID": generate_uid(), "StudyDate": "20200101", "StudyTime": "1200",
             "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "", "PatientBirthDate": "",
             "PatientSex": "O", "PatientName": "Doe^Jane"}
    slices = write_slices(tmp_path / "src", stack_positions(6, gap=2.5), extra=extra)
    liver, spleen = np.zeros((6, 6, 7), bool), np.zeros((6, 6, 7), bool)
    liver[0, 1:3, 2:5] = liver[2, 2, 2] = True
    spleen[5, 4, 6] = True  # slices 1, 3, 4 have no frame in the SEG (empty frames omitted)
    seg_path = tmp_path / "in" / "seg" / "seg.dcm"
    _seg([s.path for s in slices], seg_path, {"Liver": liver, "Spleen": spleen})
    summary = run(tmp_path / "in", tmp_path)  # the export holds only the SEG
    (row,) = summary.rows
    assert row.status == "ok" and row.label_path and not row.volume_path, row.reason
    assert "not in the export" in row.reason and "own frame geometry" in row.reason
    lab = nib.load(tmp_path / "ds" / row.label_path)
    data = np.asarray(lab.dataobj)
    ids = {v: int(k) for k, v in summary.labels.items()}
    # Oracle: the SEG's own frames (positions from its functional groups, pixels decoded by pydicom).
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    sp = np.asarray(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing, float)
    iop = np.asarray(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    names = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in ds.SegmentSequence}
    expected = np.zeros_like(data)
    for f, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        rr, cc = np.mgrid[0:ds.Rows, 0:ds.Columns]
        idx = np.rint(to_voxel(lab, ipp + cc[..., None] * sp[1] * iop[:3] + rr[..., None] * sp[0] * iop[3:]))
        idx = idx.astype(int)
        hit = f > 0
        expected[idx[..., 0][hit], idx[..., 1][hit], idx[..., 2][hit]] = ids[names[number]]
    assert data.shape == (7, 6, 6)
    np.testing.assert_array_equal(data, expected)
    assert (data > 0).sum() == liver.sum() + spleen.sum()


def test_seg_on_a_tilted_series_lands_on_its_pixels(tmp_path: Path) -> None:
    extra = {"FrameOfReferenceUID": generate_uid(), "StudyDate": "20200101", "StudyTime": "1200",
             "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "", "PatientBirthDate": "",
             "PatientSex": "O", "PatientName": "Doe^Jane"}
    pos = stack_positions(6, gap=2.0, drift=(0.0, 0.6, 0.0))
    slices = write_slices(tmp_path / "in" / "s", pos, extra=extra, shape=(8, 7), spacing=(1.0, 1.0))
    mask = np.zeros((6, 8, 7), bool)
    mask[:, 0, 0] = mask[:, 7, 6] = mask[3, 4, 2] = True  # corners of every slice: the edges of the tilted FOV
    seg_path = tmp_path / "in" / "seg" / "seg.dcm"
    _seg([s.path for s in slices], seg_path, {"Liver": mask})
    summary = run(tmp_path / "in", tmp_path)
    ok = next(r for r in summary.rows if r.status == "ok" and r.volume_path)
    assert "whole tilted field of view" in ok.reason and summary.label_errors == 0
    lab = nib.load(tmp_path / "ds" / ok.label_path)
    data = np.asarray(lab.dataobj)
    for s, m in zip(slices, mask, strict=True):  # every labelled DICOM pixel, by its own position
        lps, _ = pixel_world(s.path)
        idx = np.rint(to_voxel(lab, lps[m])).astype(int)
        assert np.all(data[idx[:, 0], idx[:, 1], idx[:, 2]] == 1)
    assert (data > 0).sum() == mask.sum()
