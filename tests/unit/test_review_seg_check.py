"""seg_agrees_with_source: a real SEG (imaging.dicom.seg.write_seg) over real pydicom sources.

Passes on axial, oblique and multi-frame sources, in source and de-identified
identity; fails, naming the problem, on the wrong source series, a shifted
source, a prediction that is not the one the SEG was made from, and a missing frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from imaging.deid.seg_header import header_deid
from imaging.dicom.seg import write_seg
from imaging.dicom.source_frames import load_source
from imaging.review.seg_check import seg_agrees_with_source, source_files_for
from tests.unit.test_seg_writer import CODES, PSEUDO, nifti_mask, write_source

NAMES = {1: "liver", 3: "spleen"}


def _make(tmp_path: Path, kind: str = "axial", identity: str = "source", seg_type: str = "BINARY"
          ) -> tuple[Path, list[Path], Path]:
    src_json = write_source(tmp_path / "src", kind)
    labels, affine = nifti_mask()
    nifti = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(nifti))
    # As inference does: the SEG and the NIfTI share the affine as stored (float32 in the header).
    affine = nib.load(str(nifti)).affine
    result = write_seg(tmp_path / "seg.dcm", load_source(src_json), labels, affine, NAMES, CODES,
                       algorithm_name="unet", algorithm_version="1", pseudonymizer=PSEUDO, header_deid=header_deid(PSEUDO), identity=identity,
                       segmentation_type=seg_type)
    assert result is not None
    files = [Path(p) for p in json.loads(src_json.read_text())["files"]]
    return result.path, files, nifti


@pytest.mark.parametrize(("kind", "identity", "seg_type"), [
    ("axial", "source", "BINARY"), ("oblique", "deidentified", "BINARY"), ("multiframe", "source", "LABELMAP"),
    ("feet_first", "deidentified", "LABELMAP"),
])
def test_agrees_on_every_check(tmp_path: Path, kind: str, identity: str, seg_type: str) -> None:
    seg, files, nifti = _make(tmp_path, kind, identity, seg_type)
    check = seg_agrees_with_source(seg, files, pseudonymizer=PSEUDO, labels_nifti=nifti, label_names=NAMES)
    assert check.ok, check.problems
    assert check.identity == identity
    assert check.segments == {1: "liver", 2: "spleen"}
    assert check.frames_on_source == check.n_frames > 0 and check.max_offset_mm < 1e-3
    assert check.n_source_frames == 12
    assert check.references_resolve and check.references_match_positions and check.frame_of_reference_matches
    assert check.mask_frames_equal == check.n_frames and check.missing_frames == 0
    table = check.table()
    assert list(table["result"]) == ["pass"] * len(table)
    # The SEG's own volume: pixels x 1.5 x 1.5 mm x 2.5 mm slice spacing, one value per segment.
    ds = pydicom.dcmread(seg)
    px = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    if seg_type == "BINARY":
        seg_numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                       for f in ds.PerFrameFunctionalGroupsSequence]
        liver = sum(int(p.sum()) for p, n in zip(px, seg_numbers, strict=True) if n == 1)
    else:
        liver = int((px == 1).sum())
    assert check.segment_volumes_ml["liver"] == pytest.approx(liver * 1.5 * 1.5 * 2.5 / 1000, abs=1e-4)


def test_deidentified_without_the_secret_checks_geometry_only(tmp_path: Path) -> None:
    seg, files, _ = _make(tmp_path, identity="deidentified")
    check = seg_agrees_with_source(seg, files)
    assert check.ok and check.identity == "unknown"
    assert check.references_resolve is None and check.frame_of_reference_matches is None
    assert check.frames_on_source == check.n_frames
    assert "n/a" in set(check.table()["result"])


def test_another_series_with_the_same_geometry_fails_on_references(tmp_path: Path) -> None:
    seg, _, _ = _make(tmp_path / "a")
    other = write_source(tmp_path / "b" / "src", "axial")  # same positions, other UIDs
    check = seg_agrees_with_source(seg, [Path(p) for p in json.loads(other.read_text())["files"]],
                                   pseudonymizer=PSEUDO)
    assert not check.ok
    assert check.frames_on_source == check.n_frames  # geometry alone cannot tell
    assert check.references_resolve is False
    assert any("matches the source" in p for p in check.problems)


def test_a_shifted_source_fails_on_positions(tmp_path: Path) -> None:
    seg, files, _ = _make(tmp_path)
    for path in files:  # move every source slice by 1 mm along x: the SEG frames no longer lie on them
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 1.0, *ds.ImagePositionPatient[1:]]
        ds.save_as(path)
    check = seg_agrees_with_source(seg, files)
    assert not check.ok
    assert check.frames_on_source == 0 and check.max_offset_mm == pytest.approx(1.0, abs=1e-6)
    assert "not on a source slice" in check.problems[0]


def test_pixels_differing_from_the_prediction_are_reported(tmp_path: Path) -> None:
    seg, files, nifti = _make(tmp_path)
    img = nib.load(str(nifti))
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 3] = 0  # the spleen vanished from the prediction: its frames disagree
    labels[:3, :3, 10:14] = 1  # and liver appears where the SEG has none
    changed = tmp_path / "changed.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), str(changed))
    check = seg_agrees_with_source(seg, files, labels_nifti=changed, label_names=NAMES)
    assert not check.ok
    assert check.mask_frames_equal is not None and check.mask_frames_equal < check.n_frames
    assert any("differ from the NIfTI prediction" in p for p in check.problems)


def test_arguments_are_validated(tmp_path: Path) -> None:
    seg, files, nifti = _make(tmp_path)
    with pytest.raises(ValueError, match="no source files"):
        seg_agrees_with_source(seg, [])
    with pytest.raises(ValueError, match="label_names"):
        seg_agrees_with_source(seg, files, labels_nifti=nifti)
    check = seg_agrees_with_source(seg, files, labels_nifti=nifti, label_names={1: "liver", 2: "kidney"})
    assert any("not model labels" in p for p in check.problems)


def test_source_files_for_reads_the_private_index(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "abc.json").write_text(json.dumps({"files": ["/x/1.dcm", "/x/2.dcm"], "frames": []}))
    assert source_files_for(tmp_path, "abc") == [Path("/x/1.dcm"), Path("/x/2.dcm")]
    with pytest.raises(FileNotFoundError, match="sources.*missing.json"):
        source_files_for(tmp_path, "missing")
