"""Synthetic export, normal subjects: determinism, readable DICOM, labels, SEG, DICOMDIR."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from imaging.synth import generate
from imaging.synth.canaries import CANARY_TOKEN


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def export(synth_export: Path) -> tuple[Path, dict]:
    """The session's shared export (tests/fixtures/datasets.py: 2 subjects, seed 0, all cases)."""
    return synth_export, json.loads((synth_export / "manifest.json").read_text())


def _normal_series(manifest: dict) -> list[dict]:
    return [s for s in manifest["series"] if s["subject"] <= manifest["subjects"]]


def test_deterministic(export: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = export
    again = generate(tmp_path / "again", subjects=2, seed=0, cases="all")
    assert again == manifest
    assert _hashes(root) == _hashes(tmp_path / "again")


def test_subjects_depend_on_seed_and_index_only(export: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = export
    first_ct = "DICOM/ZZDOE001/S0000001/SE000001/IM000001"
    generate(tmp_path / "one", subjects=1, seed=0, cases="none", dicomdir=False)
    assert (tmp_path / "one" / first_ct).read_bytes() == (root / first_ct).read_bytes()
    generate(tmp_path / "other", subjects=1, seed=1, cases="none", dicomdir=False)
    assert (tmp_path / "other" / first_ct).read_bytes() != (root / first_ct).read_bytes()


def test_normal_subjects_have_ct_and_mr_studies(export: tuple[Path, dict]) -> None:
    _, manifest = export
    assert manifest["subjects"] == 2
    normal = _normal_series(manifest)
    assert sorted(s["modality"] for s in normal) == ["CT"] * 4 + ["MR"] * 4 + ["SEG"] * 2
    assert all(s["flags"] in ([], ["seg", "ground_truth"]) for s in normal)
    assert all(s["expected"]["status"] == "ok" for s in normal if s["modality"] != "SEG")
    for subject in (1, 2):
        studies = {s["study_instance_uid"] for s in normal if s["subject"] == subject}
        assert len(studies) == 2


def test_every_file_is_dicom_with_realistic_headers(export: tuple[Path, dict]) -> None:
    root, manifest = export
    manufacturers = set()
    for series in _normal_series(manifest):
        for rel in series["files"]:
            ds = pydicom.dcmread(root / rel)
            assert ds.SeriesInstanceUID == series["series_instance_uid"]
            assert ds.StudyInstanceUID == series["study_instance_uid"]
            assert ds.PatientID == series["patient_id"]
            assert ds.Modality == series["modality"]
            manufacturers.add(ds.Manufacturer)
            if series["modality"] == "CT":
                assert ds.SOPClassUID == pydicom.uid.CTImageStorage
                assert float(ds.RescaleIntercept) == -1024.0
                assert {"KVP", "ConvolutionKernel", "FrameOfReferenceUID", "PatientPosition"} <= set(ds.dir())
            if series["modality"] == "MR":
                assert ds.SOPClassUID == pydicom.uid.MRImageStorage
                assert {"RepetitionTime", "EchoTime", "MagneticFieldStrength", "FlipAngle"} <= set(ds.dir())
    assert len(manufacturers - {"imaging-synth"}) == 2  # subjects 1 and 2 differ in vendor


def test_ct_intensities_are_anatomical(export: tuple[Path, dict]) -> None:
    root, manifest = export
    ct = next(s for s in manifest["series"] if s["modality"] == "CT" and s["labels"])
    labels = np.asarray(nib.load(root / ct["labels"]["nifti"]).dataobj)
    hu = np.stack([pydicom.dcmread(root / f).pixel_array.T.astype(float) - 1024 for f in ct["files"]], -1)
    liver, spleen, kidney = (np.median(hu[labels == v]) for v in (1, 2, 3))
    assert 50 < liver < 70 and 35 < spleen < 55 and 130 < kidney < 170
    assert np.median(hu[0:3, 0:3, :]) < -900  # air in the corners
    assert (labels == 1).sum() > (labels == 2).sum()  # liver is the largest organ


def _sorted_positions(root: Path, series: dict) -> tuple[np.ndarray, int, int]:
    """IPPs in volume k order (single-frame files or enhanced frames), rows, columns."""
    headers = [pydicom.dcmread(root / f, stop_before_pixels=True) for f in series["files"]]
    first = headers[0]
    if "PerFrameFunctionalGroupsSequence" in first:
        iop = first.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        ipp = [f.PlanePositionSequence[0].ImagePositionPatient for f in first.PerFrameFunctionalGroupsSequence]
    else:
        iop, ipp = first.ImageOrientationPatient, [ds.ImagePositionPatient for ds in headers]
    pos = np.array(ipp, float)
    normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
    return pos[np.argsort(pos @ normal)], int(first.Rows), int(first.Columns)


def test_label_nifti_affine_matches_dicom(export: tuple[Path, dict]) -> None:
    root, manifest = export
    labelled = [s for s in manifest["series"] if s["labels"]]
    assert {"enhanced", "tilt:15", "position:HFDR", "oblique"} <= {f for s in labelled for f in s["flags"]}
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for series in labelled:
        img = nib.load(root / series["labels"]["nifti"])
        pos, rows, cols = _sorted_positions(root, series)
        assert img.shape == (cols, rows, len(pos))
        # voxel (0, 0, k) is the k-th sorted slice's IPP (in RAS), for every k.
        ks = np.arange(len(pos))
        vox = np.stack([np.zeros_like(ks), np.zeros_like(ks), ks, np.ones_like(ks)])
        assert np.allclose((img.affine @ vox)[:3].T, pos * lps_to_ras, atol=1e-3), series["description"]
        assert int(img.header["sform_code"]) == 1
        # the NIfTI files list in manifest geometry agrees
        assert np.allclose(img.affine, series["geometry"]["affine_ras"], atol=1e-4)


def test_seg_matches_label_nifti(export: tuple[Path, dict]) -> None:
    root, manifest = export
    ct = next(s for s in manifest["series"] if s["labels"] and s["labels"]["seg"])
    seg = hd.seg.segread(root / ct["labels"]["seg"])
    assert seg.SeriesInstanceUID != ct["series_instance_uid"]
    names = {d.SegmentLabel: d.SegmentNumber for d in seg.SegmentSequence}
    assert set(names) == {"liver", "spleen", "kidney"}
    for desc in seg.SegmentSequence:
        assert desc.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert desc.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    labels = np.asarray(nib.load(root / ct["labels"]["nifti"]).dataobj)
    sop_uids = [pydicom.dcmread(root / f, stop_before_pixels=True).SOPInstanceUID for f in ct["files"]]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, combine_segments=True, relabel=False
    )
    # (frames, rows, cols) in the files' (sorted) order vs NIfTI (cols, rows, k).
    assert np.array_equal(masks.transpose(2, 1, 0), labels)


def test_dicomdir_indexes_all_dicom(export: tuple[Path, dict]) -> None:
    root, manifest = export
    fs = FileSet(pydicom.dcmread(root / "DICOMDIR"))
    indexed = {Path(i.path).relative_to(root).as_posix() for i in fs}
    written = {f for s in manifest["series"] for f in s["files"]}
    assert any("truncated" in s["flags"] for s in manifest["series"])  # indexed too: its header reads
    assert indexed == written
    assert all(Path(i.path).exists() for i in fs)


def test_non_dicom_files_present(export: tuple[Path, dict]) -> None:
    root, manifest = export
    for rel in manifest["non_dicom_files"]:
        assert (root / rel).is_file()
        with pytest.raises(pydicom.errors.InvalidDicomError):
            pydicom.dcmread(root / rel)


def test_rerun_reuses_the_same_export_or_refuses_another(export: tuple[Path, dict]) -> None:
    root, manifest = export
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert generate(root, subjects=2, seed=0, cases="all") == manifest  # same request: reused
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="not empty"):
        generate(root, subjects=1, cases="none")
    with pytest.raises(ValueError, match="size"):
        generate(root.parent / "bad_size", size="huge")


def test_canaries_listed_and_in_files(export: tuple[Path, dict]) -> None:
    root, manifest = export
    assert manifest["canaries"] and all(isinstance(c, str) for c in manifest["canaries"])
    ds = pydicom.dcmread(root / manifest["series"][0]["files"][0])
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "SeriesDescription"):
        value = str(ds.data_element(keyword).value)
        assert CANARY_TOKEN in value and value in manifest["canaries"]
    assert ds.PatientBirthDate in manifest["canaries"] and ds.StudyDate in manifest["canaries"]
    assert ds.SOPInstanceUID in manifest["uids"] and ds.FrameOfReferenceUID in manifest["uids"]
