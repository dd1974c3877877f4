"""RTSTRUCT writer: contours on the referenced slices' planes, rasterised back to the SEG's mask.

Sources are the SEG tests' series (axial, oblique, gantry tilt, feet first,
multi-frame); the expected per-slice mask comes from an independent nibabel
sampling (``_expected``), the read-back is pydicom, the rasterisation is
matplotlib's point-in-polygon, and dciodvfy (dicom3tools) checks the IOD.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.deid.seg_header import header_deid
from imaging.dicom.rtstruct import (
    RT_STRUCTURE_SET,
    rasterise_contours,
    read_rtstruct,
    write_rtstruct,
)
from imaging.dicom.seg import write_seg
from imaging.dicom.seg_read import read_seg_frames
from imaging.dicom.source_frames import load_source
from imaging.keys import Pseudonymizer
from tests.unit.test_seg_writer import CANARY, _expected, nifti_mask, write_source

NAMES = {1: "liver", 3: "kidney"}
PSEUDO = Pseudonymizer.from_config(demo_key=True)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@pytest.mark.parametrize("kind", ["axial", "oblique", "tilt", "feet_first", "multiframe"])
def test_rtstruct_round_trip_matches_mask(tmp_path: Path, kind: str) -> None:
    source = load_source(write_source(tmp_path / "src", kind, rows=28, cols=30))
    labels, affine = nifti_mask()
    result = write_rtstruct(tmp_path / "rt.dcm", source, labels, affine, NAMES, algorithm_name="demo_seg",
                            algorithm_version="3", identity="source")
    assert result is not None and result.n_contours > 0
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    assert ds.SOPClassUID == RT_STRUCTURE_SET and ds.Modality == "RTSTRUCT"
    assert {r.ROIName for r in ds.StructureSetROISequence} == {"liver", "kidney"}
    # Every source instance (frame) is listed once in the referenced series, in the same frame of reference.
    ref_for = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == source.headers[0].FrameOfReferenceUID
    series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.headers[0].SeriesInstanceUID
    listed = {(str(r.ReferencedSOPInstanceUID), int(r.get("ReferencedFrameNumber", 1)))
              for r in series.ContourImageSequence}
    frames = ([(0, f) for f in range(1, int(source.headers[0].NumberOfFrames) + 1)] if source.is_multiframe
              else [(i, 1) for i in range(len(source.headers))])
    assert listed == {(str(source.headers[h].SOPInstanceUID), f) for h, f in frames}

    contours = read_rtstruct(tmp_path / "rt.dcm")
    by_frame: dict[tuple[str, int], dict[str, list[np.ndarray]]] = {}
    for c in contours:
        by_frame.setdefault((c.sop_instance_uid, c.frame or 1), {}).setdefault(c.roi, []).append(c.points)
    inter = {n: 0 for n in NAMES.values()}
    sizes = {n: [0, 0] for n in NAMES.values()}
    for h, f in frames:
        geom = source.geometry(h, f)
        uid = str(source.headers[h].SOPInstanceUID)
        expected = _expected(geom.ipp, geom.iop, geom.spacing, geom.rows, geom.cols, labels, affine)
        normal = np.cross(geom.iop[:3], geom.iop[3:])
        got_rois = by_frame.get((uid, f), {})
        for value, name in NAMES.items():
            pts = got_rois.get(name, [])
            for p in pts:  # on the referenced slice's plane
                assert np.max(np.abs((p - geom.ipp) @ normal)) < 1e-3
            want = expected == value
            # exact slice references: contours exactly on the frames whose mask has this label
            assert bool(pts) == bool(want.any()), (kind, uid, f, name)
            got = rasterise_contours(pts, geom) if pts else np.zeros_like(want)
            inter[name] += int(np.logical_and(got, want).sum())
            sizes[name][0] += int(got.sum())
            sizes[name][1] += int(want.sum())
    for name in NAMES.values():
        assert sizes[name][1] > 0
        dice = 2.0 * inter[name] / sum(sizes[name])
        assert dice >= 0.95, (kind, name, dice)


def test_rtstruct_and_seg_read_back_to_the_same_mask(tmp_path: Path) -> None:
    """The Done-when check: SEG frames and rasterised RTSTRUCT contours agree slice by slice."""
    source = load_source(write_source(tmp_path / "src", "oblique", rows=28, cols=30, patient=CANARY))
    labels, affine = nifti_mask()
    write_seg(tmp_path / "seg.dcm", source, labels, affine, NAMES, {}, algorithm_name="m", algorithm_version="1",
              pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO), identity="deidentified")
    write_rtstruct(tmp_path / "rt.dcm", source, labels, affine, NAMES, algorithm_name="m", algorithm_version="1",
                   pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO), identity="deidentified")
    rt = pydicom.dcmread(tmp_path / "rt.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert CANARY not in str(rt)  # deidentified like the SEG, same pseudonyms
    for kw in ("PatientID", "StudyInstanceUID"):
        assert rt.get(kw) == seg.get(kw)
    seg_names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    seg_masks: dict[tuple[str, str], np.ndarray] = {}
    for fr in read_seg_frames(tmp_path / "seg.dcm"):
        seg_masks[(fr.referenced_sop_instance_uid, seg_names[fr.segment_number])] = fr.mask.astype(bool)
    geoms = {}
    for i, h in enumerate(source.headers):
        geoms[PSEUDO.uid(str(h.SOPInstanceUID))] = source.geometry(i, 1)
    rt_contours: dict[tuple[str, str], list[np.ndarray]] = {}
    for c in read_rtstruct(tmp_path / "rt.dcm"):
        rt_contours.setdefault((c.sop_instance_uid, c.roi), []).append(c.points)
    assert set(rt_contours) == set(seg_masks)  # same slices referenced, same structures
    for key, pts in rt_contours.items():
        got = rasterise_contours(pts, geoms[key[0]])
        assert _dice(got, seg_masks[key]) >= 0.95, key
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == seg.FrameOfReferenceUID


def test_rtstruct_empty_mask_writes_nothing(tmp_path: Path) -> None:
    source = load_source(write_source(tmp_path / "src", "axial"))
    labels, affine = nifti_mask()
    assert write_rtstruct(tmp_path / "rt.dcm", source, np.zeros_like(labels), affine, NAMES,
                          algorithm_name="m", algorithm_version="1", identity="source") is None
    assert not (tmp_path / "rt.dcm").exists()


def test_rtstruct_dciodvfy_accepts_it(tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy (dicom3tools) must be installed: scripts/system-deps.sh"
    source = load_source(write_source(tmp_path / "src", "tilt"))
    labels, affine = nifti_mask()
    write_rtstruct(tmp_path / "rt.dcm", source, labels, affine, NAMES, algorithm_name="m", algorithm_version="1",
                   pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO), identity="deidentified")
    proc = subprocess.run([dciodvfy, str(tmp_path / "rt.dcm")], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    assert "RTStructureSet" in report or "RT Structure Set" in report, report[:2000]
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_rtstruct_uid_follows_the_mask(tmp_path: Path) -> None:
    """An option that changes the mask (largest_component, labels, tta_flip) gives a new UID; the same
    mask the same UID (a re-run stays 'already present' in the archive)."""
    source = load_source(write_source(tmp_path / "src", "axial", rows=28, cols=30))
    labels, affine = nifti_mask()

    def uids(mask: np.ndarray, name: str) -> tuple[str, str]:
        write_rtstruct(tmp_path / name, source, mask, affine, NAMES, algorithm_name="m", algorithm_version="1",
                       pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO))
        ds = pydicom.dcmread(tmp_path / name, stop_before_pixels=True)
        return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    first, again = uids(labels, "a.dcm"), uids(labels.copy(), "b.dcm")
    only_liver = np.where(labels == 1, labels, 0).astype(labels.dtype)
    changed = uids(only_liver, "c.dcm")
    assert first == again
    assert changed[0] != first[0] and changed[1] != first[1]


def test_rtstruct_uid_follows_the_mask_without_a_pseudonymizer(tmp_path: Path) -> None:
    """identity=source without a secret, as the SEG: UIDs derived from the source series and the mask
    (they were random per run, so a re-run pushed a duplicate RTSTRUCT under a new UID)."""
    source = load_source(write_source(tmp_path / "src", "axial", rows=28, cols=30))
    labels, affine = nifti_mask()

    def uids(mask: np.ndarray, name: str) -> tuple[str, str]:
        write_rtstruct(tmp_path / name, source, mask, affine, NAMES, algorithm_name="m", algorithm_version="1",
                       identity="source")
        ds = pydicom.dcmread(tmp_path / name, stop_before_pixels=True)
        return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    first, again = uids(labels, "a.dcm"), uids(labels.copy(), "b.dcm")
    changed = uids(np.where(labels == 1, labels, 0).astype(labels.dtype), "c.dcm")
    assert first == again and all(u.startswith("2.25.") for u in first)
    assert changed[0] != first[0] and changed[1] != first[1]
    assert len(set(first)) == 2  # series and instance UIDs differ
