"""Synthetic export, tricky cases: each case is present, flagged, and written as a scanner would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from imaging.synth import generate
from imaging.synth import phantom as ph
from imaging.synth.cases import CASES, POSITIONS
from imaging.synth.export import Export, grid_for, new_info
from imaging.synth.objects import UNKNOWN_TS
from imaging.synth.writer import SliceOptions, write_slices


@pytest.fixture(scope="module")
def export(synth_export: Path) -> tuple[Path, dict]:
    """The session's shared export (tests/fixtures/datasets.py: 2 subjects, all cases)."""
    return synth_export, json.loads((synth_export / "manifest.json").read_text())


def _series(manifest: dict, flag: str) -> list[dict]:
    found = [s for s in manifest["series"] if flag in s["flags"]]
    assert found, f"no series flagged {flag!r}"
    return found


def _headers(root: Path, series: dict) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(root / f, stop_before_pixels=True) for f in series["files"]]


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def test_every_case_is_in_the_manifest(export: tuple[Path, dict]) -> None:
    _, manifest = export
    assert manifest["cases"] == list(CASES)
    flags = {f for s in manifest["series"] for f in s["flags"]}
    for flag in ("shuffled_instance_numbers", "shuffled_file_names", "oblique", "tilt:15", "uneven_spacing",
                 "missing_slice", "shared_folder", "enhanced", "4d", "localizer", "secondary_capture", "sr",
                 "truncated", "missing_tag:ImageOrientationPatient", "unknown_transfer_syntax", "too_few_slices",
                 *(f"position:{p}" for p in POSITIONS), *(f"compressed:{ts}" for ts in
                                                         (RLELossless, JPEGLSLossless, JPEG2000Lossless))):
        assert flag in flags, flag
    statuses = {s["expected"]["status"] for s in manifest["series"]}
    assert statuses == {"ok", "skipped", "error"}


def test_every_file_readable_except_the_intended_bad_ones(export: tuple[Path, dict]) -> None:
    root, manifest = export
    for series in manifest["series"]:
        bad = set(series.get("bad_files", []))
        for rel in series["files"]:
            assert (root / rel).is_file(), rel
            ds = pydicom.dcmread(root / rel, stop_before_pixels=rel in bad)
            assert ds.SeriesInstanceUID == series["series_instance_uid"]
            if rel not in bad and "PixelData" in ds:
                assert ds.pixel_array.size > 0
    (truncated,) = _series(manifest, "truncated")
    (bad,) = truncated["bad_files"]
    assert truncated["expected_files"][bad]["status"] == "error"
    sizes = {(root / f).stat().st_size for f in truncated["files"] if f != bad}
    assert (root / bad).stat().st_size < min(sizes) * 0.6
    with pytest.raises(Exception):  # noqa: B017 - pydicom raises different errors for cut data
        pydicom.dcmread(root / bad).pixel_array  # noqa: B018


def test_compressed_series_decode_losslessly(export: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = export
    for ts in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        (series,) = _series(manifest, f"compressed:{ts}")
        for ds in (pydicom.dcmread(root / f) for f in series["files"][:3]):
            assert ds.file_meta.TransferSyntaxUID == ts
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    # Reference: the same slices written uncompressed and compressed must give the same pixels.
    ex = Export(tmp_path, 0, "small", "nested")
    subject = ex.subject(1)
    for ts in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        info, _ = new_info(ex, subject, "CT", "CT", "CT", "REF", grid_for(ex, subject, "case", n_slices=3))
        plain = [tmp_path / f"plain{i}" for i in range(3)]
        packed = [tmp_path / f"packed{i}" for i in range(3)]
        write_slices(info, subject.phantom, plain, np.random.default_rng(1))
        write_slices(info, subject.phantom, packed, np.random.default_rng(1), SliceOptions(transfer_syntax=ts))
        for a, b in zip(plain, packed, strict=True):
            da, db = pydicom.dcmread(a), pydicom.dcmread(b)
            assert db.file_meta.TransferSyntaxUID == ts and da.file_meta.TransferSyntaxUID != ts
            assert np.array_equal(da.pixel_array, db.pixel_array)


# Physical rules, stated independently of the generator's table: the image's downward
# direction points at the side lying on the table, and the slice normal (row x column)
# is the gantry axis, towards the head for head-first and the feet for feet-first.
DOWN = {"HFS": [0, 1, 0], "FFS": [0, 1, 0], "HFP": [0, -1, 0], "FFP": [0, -1, 0],
        "HFDL": [1, 0, 0], "HFDR": [-1, 0, 0]}


@pytest.mark.parametrize("position", POSITIONS)
def test_patient_positions(export: tuple[Path, dict], position: str) -> None:
    root, manifest = export
    (series,) = _series(manifest, f"position:{position}")
    headers = _headers(root, series)
    head_first = position.startswith("HF")
    for ds in headers:
        assert ds.PatientPosition == position
        iop = np.array(ds.ImageOrientationPatient, float)
        assert np.allclose(iop[3:], DOWN[position])
        assert np.allclose(_normal(ds), [0, 0, 1] if head_first else [0, 0, -1])
    # Table travel: head-first scans go towards the feet (z falls with InstanceNumber).
    by_instance = sorted(headers, key=lambda d: int(d.InstanceNumber))
    z = np.array([float(d.ImagePositionPatient[2]) for d in by_instance])
    assert (np.diff(z) < 0).all() if head_first else (np.diff(z) > 0).all()


def _world(ds: pydicom.Dataset) -> np.ndarray:
    """(rows, cols, 3) LPS position of every pixel centre from the DICOM tags alone."""
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r = np.arange(ds.Rows)[:, None, None] * dr * iop[3:]
    c = np.arange(ds.Columns)[None, :, None] * dc * iop[:3]
    return np.array(ds.ImagePositionPatient, float) + r + c


@pytest.mark.parametrize("flag", [*(f"position:{p}" for p in POSITIONS), "oblique", "tilt:15"])
def test_pixels_are_where_the_geometry_tags_say(export: tuple[Path, dict], flag: str) -> None:
    """The anatomy at each pixel's world position (from IPP/IOP/PixelSpacing) is what the pixel shows."""
    root, manifest = export
    (series,) = _series(manifest, flag)
    subject = Export(root / "unused", manifest["seed"], "small", "nested").subject(series["subject"])
    for rel in series["files"][::6]:
        ds = pydicom.dcmread(root / rel)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        truth = ph.CT_HU[subject.phantom.tissue(_world(ds))]
        # 60 HU is 5 noise sigmas: a pixel off by more shows another tissue.
        assert np.count_nonzero(np.abs(hu - truth) >= 60) <= 2, (flag, rel)
        # ...and a flipped raster would not match (the check has teeth).
        assert np.count_nonzero(np.abs(hu[::-1, :] - truth) >= 60) >= 50
        assert np.count_nonzero(np.abs(hu[:, ::-1] - truth) >= 60) >= 50


def test_gantry_tilt_shears_positions(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (series,) = _series(manifest, "tilt:15")
    headers = _headers(root, series)
    assert all(float(ds.GantryDetectorTilt) == 15.0 for ds in headers)
    ipp = np.array([ds.ImagePositionPatient for ds in headers], float)
    steps = np.diff(ipp, axis=0)
    assert np.allclose(steps[:, :2], 0.0, atol=1e-4)  # the table moves along z only
    n = _normal(headers[0])
    cos = abs(steps[0] @ n) / np.linalg.norm(steps[0])
    assert np.isclose(np.degrees(np.arccos(cos)), 15.0, atol=1e-3)  # ... while slices are tilted


def test_oblique_orientation(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (series,) = _series(manifest, "oblique")
    ds = _headers(root, series)[0]
    iop = np.array(ds.ImageOrientationPatient, float)
    assert np.isclose(np.linalg.norm(iop[:3]), 1) and np.isclose(iop[:3] @ iop[3:], 0, atol=1e-7)
    assert (np.abs(iop) > 0.1).sum() >= 4  # not axis-aligned about two axes


def _gaps(root: Path, series: dict) -> np.ndarray:
    headers = _headers(root, series)
    d = sorted(np.array(ds.ImagePositionPatient, float) @ _normal(ds) for ds in headers)
    return np.diff(d)


def test_uneven_and_missing_slices(export: tuple[Path, dict]) -> None:
    root, manifest = export
    uneven = _gaps(root, _series(manifest, "uneven_spacing")[0])
    assert np.ptp(uneven) > 1.0
    (missing_series,) = _series(manifest, "missing_slice")
    missing = _gaps(root, missing_series)
    step = np.median(missing)
    assert np.isclose(missing.max(), 2 * step) and (np.isclose(missing, step).sum() == len(missing) - 1)
    assert missing_series["expected"]["shape"][2] == len(missing_series["files"]) + 1


def test_instance_numbers_and_file_names_do_not_follow_position(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (by_number,) = _series(manifest, "shuffled_instance_numbers")
    numbers = [int(ds.InstanceNumber) for ds in _headers(root, by_number)]  # files are in position order
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    (by_name,) = _series(manifest, "shuffled_file_names")
    assert by_name["files"] != sorted(by_name["files"]) and by_name["files"] != sorted(by_name["files"])[::-1]


def test_two_series_share_a_folder(export: tuple[Path, dict]) -> None:
    root, manifest = export
    pair = _series(manifest, "shared_folder")
    assert len(pair) == 2 and pair[0]["folder"] == pair[1]["folder"]
    assert pair[0]["series_instance_uid"] != pair[1]["series_instance_uid"]
    assert not set(pair[0]["files"]) & set(pair[1]["files"])
    on_disk = {p.name for p in (root / pair[0]["folder"]).iterdir()}
    assert len(on_disk) == len(pair[0]["files"]) + len(pair[1]["files"])


def test_enhanced_multiframe_mr(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (series,) = _series(manifest, "enhanced")
    ds = pydicom.dcmread(root / series["files"][0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
    n = int(ds.NumberOfFrames)
    assert ds.pixel_array.shape == (n, ds.Rows, ds.Columns)
    assert "ImageOrientationPatient" not in ds and "ImagePositionPatient" not in ds
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert len(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == 6
    assert len(shared.PixelMeasuresSequence[0].PixelSpacing) == 2
    positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence]
    assert len({tuple(p) for p in positions}) == n == series["expected"]["shape"][2]
    assert series["labels"] and (root / series["labels"]["nifti"]).is_file()


def test_4d_series_repeats_positions(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (series,) = _series(manifest, "4d")
    headers = _headers(root, series)
    by_t: dict[int, set[tuple[float, ...]]] = {}
    for ds in headers:
        by_t.setdefault(int(ds.TemporalPositionIdentifier), set()).add(tuple(ds.ImagePositionPatient))
    assert sorted(by_t) == [1, 2, 3] == list(range(1, series["expected"]["timepoints"] + 1))
    assert by_t[1] == by_t[2] == by_t[3]
    assert len({float(ds.TriggerTime) for ds in headers}) == 3
    assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)


def test_non_volume_objects(export: tuple[Path, dict]) -> None:
    root, manifest = export
    topogram, three_plane = _series(manifest, "localizer")
    ds = _headers(root, topogram)[0]
    assert "LOCALIZER" in ds.ImageType and len(topogram["files"]) == 1
    orientations = {tuple(ds.ImageOrientationPatient) for ds in _headers(root, three_plane)}
    assert len(orientations) == 3
    (sc,) = _series(manifest, "secondary_capture")
    ds = pydicom.dcmread(root / sc["files"][0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and "ImageOrientationPatient" not in ds
    (sr,) = _series(manifest, "sr")
    ds = pydicom.dcmread(root / sr["files"][0])
    assert ds.Modality == "SR" and "ZZPHI" in ds.ContentSequence[0].TextValue
    assert ds.ContentSequence[0].TextValue in manifest["canaries"]


def test_bad_series(export: tuple[Path, dict]) -> None:
    root, manifest = export
    (no_iop,) = _series(manifest, "missing_tag:ImageOrientationPatient")
    assert all("ImageOrientationPatient" not in ds for ds in _headers(root, no_iop))
    assert no_iop["expected"] == {**no_iop["expected"], "status": "error"}
    (unknown,) = _series(manifest, "unknown_transfer_syntax")
    ds = pydicom.dcmread(root / unknown["files"][0])
    assert ds.file_meta.TransferSyntaxUID == UNKNOWN_TS
    with pytest.raises(NotImplementedError):
        ds.pixel_array  # noqa: B018
    (few,) = _series(manifest, "too_few_slices")
    assert len(few["files"]) == 2 and few["expected"]["status"] == "ok" and few["expected"]["shape"][2] == 2


def test_flat_layout_and_subset_of_cases(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "flat", subjects=0, cases=["shared_folder", "sr"], layout="flat")
    files = [f for s in manifest["series"] for f in s["files"]]
    assert all(f.count("/") == 1 and f.startswith("DICOM/") for f in files)
    assert len(set(files)) == len(files)
    assert {f for s in manifest["series"] for f in s["flags"]} >= {"shared_folder", "sr"}
    fs = pydicom.fileset.FileSet(pydicom.dcmread(tmp_path / "flat" / "DICOMDIR"))
    assert len(fs) == len(files)
    with pytest.raises(ValueError, match="unknown synth case"):
        generate(tmp_path / "bad", cases=["no_such_case"])
