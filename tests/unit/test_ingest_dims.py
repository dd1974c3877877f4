"""4D by the real dimensions, diffusion and Siemens mosaics, with dcm2niix as the oracle.

Every series here is also converted by dcm2niix; our volumes must hold the same
intensities at the same world positions (voxel grids mapped through both
affines, not arrays compared), and our bval/bvec the same b-values and the same
gradient directions once both bvec files are taken from voxel to world space
(FSL convention: x negated when the affine's determinant is positive).
Test data: real Siemens files shipped in nibabel (DWI mosaics, CSA headers) and
vendor-style series written with pydicom (tests/fixtures/vendor_mr.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.header import header_row
from tests.fixtures.vendor_mr import (
    NICOM_DATA,
    dcm2niix,
    write_dual_echo_mag_phase,
    write_dwi,
    write_enhanced_dwi,
    write_ge_fmri,
    write_mosaic_series,
    write_multi_echo_fmri,
    write_philips_asl,
)
from tests.unit.test_ingest_geometry import assert_matches_dicom, run
from tests.unit.test_ingest_inputs import keyed

OBLIQUE = (0.9659258, 0.2588190, 0.0, -0.2241439, 0.8365163, -0.5)  # 15 deg about z, then 30 about x


def _voxel_map(ours: nib.Nifti1Image, theirs: nib.Nifti1Image) -> np.ndarray:
    """Their voxel index of every one of our voxels (x, y, z), asserting the grids coincide."""
    t = np.linalg.inv(theirs.affine) @ ours.affine
    np.testing.assert_allclose(t[:3, :3], np.rint(t[:3, :3]), atol=2e-3, err_msg="grids not aligned")
    np.testing.assert_allclose(t[:3, 3], np.rint(t[:3, 3]), atol=2e-2, err_msg="grids shifted")
    shape = ours.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    idx = np.rint(ijk @ np.rint(t[:3, :3]).T + np.rint(t[:3, 3])).astype(int)
    assert (idx >= 0).all() and (idx < np.asarray(theirs.shape[:3])).all(), "our grid leaves theirs"
    return idx


def assert_same_world(ours_path: Path, theirs_path: Path, theirs_volume: int | None = None) -> None:
    """Same intensities at the same world positions (``theirs_volume``: one 3D volume of their 4D file)."""
    ours, theirs = nib.load(ours_path), nib.load(theirs_path)
    their_data = np.asarray(theirs.dataobj, dtype=np.float64)
    if theirs_volume is not None:
        their_data = their_data[..., theirs_volume]
    assert ours.shape[3:] == their_data.shape[3:] and np.prod(ours.shape[:3]) == np.prod(theirs.shape[:3])
    idx = _voxel_map(ours, theirs)
    a = np.asarray(ours.dataobj, dtype=np.float64).reshape(len(idx), -1)
    b = their_data[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(len(idx), -1)
    np.testing.assert_allclose(a, b, atol=1e-3)


def world_bvecs(bvec: Path, nii: Path) -> np.ndarray:
    v = np.loadtxt(bvec, ndmin=2).copy()
    aff = nib.load(nii).affine[:3, :3]
    if np.linalg.det(aff) > 0:
        v[0] = -v[0]
    return ((aff / np.linalg.norm(aff, axis=0)) @ v).T


def assert_same_diffusion(ours_nii: Path, theirs_nii: Path) -> None:
    stem_o, stem_t = str(ours_nii).removesuffix(".nii.gz"), str(theirs_nii).removesuffix(".nii.gz")
    np.testing.assert_allclose(np.loadtxt(f"{stem_o}.bval"), np.loadtxt(f"{stem_t}.bval"), atol=0.5)
    a, b = world_bvecs(Path(f"{stem_o}.bvec"), ours_nii), world_bvecs(Path(f"{stem_t}.bvec"), theirs_nii)
    for va, vb in zip(a, b, strict=True):  # a direction and its opposite are the same measurement
        assert np.allclose(va, vb, atol=2e-3) or np.allclose(va, -vb, atol=2e-3), (va, vb)


def _ok(summary) -> list:
    ok = [r for r in summary.rows if r.status == "ok"]
    assert ok and all(r.status == "ok" for r in summary.rows), [(r.status, r.reason) for r in summary.rows]
    return sorted(ok, key=lambda r: r.series_key)


def _matching(ours: Path, candidates: list[Path]) -> Path:
    """The dcm2niix output holding our volume (same world grid and intensities)."""
    for c in candidates:
        try:
            assert_same_world(ours, c)
        except AssertionError:
            continue
        return c
    raise AssertionError(f"no dcm2niix output matches {ours.name}: {[c.name for c in candidates]}")


def test_real_siemens_dwi_mosaics_match_dcm2niix(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        (src / name.removesuffix(".gz")).write_bytes(gzip.decompress((NICOM_DATA / name).read_bytes()))
    (row,) = _ok(run(src, tmp_path))
    assert row.shape == "128x128x48x2" and row.n_timepoints == 2
    (theirs,) = dcm2niix(src, tmp_path / "d2n")
    ours = tmp_path / "ds" / row.volume_path
    assert_same_world(ours, theirs)
    assert_same_diffusion(ours, theirs)
    sidecar = json.loads(ours.with_name(ours.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["DiffusionBValues"] == [0.0, 1000.0] and sidecar["FourthAxis"].startswith("diffusion")
    assert nib.load(ours).header.get_zooms()[3] == 1.0  # 4th axis is b, not time


AXIAL, SAG, COR = (1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)


@pytest.mark.parametrize(("vendor", "iop", "descending"), [
    ("siemens", OBLIQUE, False), ("siemens", SAG, True), ("siemens_csa", AXIAL, False), ("philips", OBLIQUE, False),
    ("philips", COR, True), ("canon", SAG, False), ("ge", AXIAL, False), ("ge", AXIAL, True), ("ge", SAG, False),
    ("ge", COR, False), ("ge_row", AXIAL, False),
])
def test_classic_dwi_each_vendor_matches_dcm2niix(tmp_path: Path, vendor: str, iop, descending: bool) -> None:
    info = write_dwi(tmp_path / "in" / "dwi", vendor, iop=iop, descending=descending)
    _check_dwi(tmp_path, info)


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_repeated_b0_and_slice_major_numbering_keep_dcm2niix_order(tmp_path: Path, vendor: str) -> None:
    dirs = [(0, 0, 0), (1, 0, 0), (0, 0, 0), (0, 1, 0), (0, 0, 0), (0, 0, 1)]
    info = write_dwi(tmp_path / "in" / "dwi", vendor, directions=dirs, slice_major=vendor == "philips",
                     ge_b0_nominal=True)
    _check_dwi(tmp_path, info)


def _check_dwi(tmp_path: Path, info: dict) -> None:
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    n = len(info["directions"])
    assert row.n_timepoints == n and row.shape.endswith(f"x4x{n}")
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    ours = tmp_path / "ds" / row.volume_path
    assert_same_world(ours, theirs)
    assert_same_diffusion(ours, theirs)


def test_ge_fmri_without_temporal_tags_is_4d_in_acquisition_order(tmp_path: Path) -> None:
    data = write_ge_fmri(tmp_path / "in" / "fmri")
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "8x8x5x4" and row.n_timepoints == 4
    ours = tmp_path / "ds" / row.volume_path
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(ours, theirs)
    img = nib.load(ours)
    assert img.header.get_zooms()[3] == pytest.approx(2.0)  # TR: the 4th axis is time
    # timepoint t holds the t-th acquisition (not a mix): slice 0 of volume t is data[t, 0]
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0, :].transpose(2, 1, 0), data[:, 0])
    assert not ours.with_name(ours.name.replace(".nii.gz", ".bval")).exists()


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_magnitude_phase_dual_echo_gives_four_volumes(tmp_path: Path, vendor: str) -> None:
    write_dual_echo_mag_phase(tmp_path / "in" / "fm", vendor=vendor)
    rows = _ok(run(tmp_path / "in", tmp_path))
    assert len(rows) == 4 and {r.shape for r in rows} == {"9x6x4"}
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert len(theirs) == 4
    used = set()
    tes = []
    for r in rows:
        ours = tmp_path / "ds" / r.volume_path
        used.add(_matching(ours, theirs))
        sidecar = json.loads(ours.with_name(ours.name.replace(".nii.gz", ".json")).read_text())
        tes.append(sidecar["EchoTime"])
        if vendor == "siemens":
            assert ("component P" in r.reason) == ("P" in sidecar["ImageType"])
    assert len(used) == 4  # each of dcm2niix's volumes matched by exactly one of ours
    assert sorted(tes) == [0.00492, 0.00492, 0.00738, 0.00738]  # each volume's own parameters, BIDS seconds


def test_mosaic_time_series_from_real_csa_matches_dcm2niix(tmp_path: Path) -> None:
    write_mosaic_series(tmp_path / "in" / "bold", n_time=3)
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "128x128x48x3" and row.n_instances == 3
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(tmp_path / "ds" / row.volume_path, theirs)


def test_oblique_3d_mosaic_from_real_csa_matches_dcm2niix(tmp_path: Path) -> None:
    write_mosaic_series(tmp_path / "in" / "t1", "csa_slice_norm.dcm", n_time=1)
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "64x64x32" and row.n_timepoints == 1
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(tmp_path / "ds" / row.volume_path, theirs)


def test_dwi_split_by_config_and_stray_duplicate_still_refused(tmp_path: Path) -> None:
    write_dwi(tmp_path / "in" / "dwi", "philips", directions=[(0, 0, 0), (1, 0, 0), (0, 1, 0)])
    rows = _ok(run(tmp_path / "in", tmp_path, split_4d=True))
    assert len(rows) == 3 and {r.shape for r in rows} == {"10x8x4"}
    assert "4D split by diffusion" in rows[0].reason


@pytest.mark.parametrize("vendor", ["ge", "philips", "siemens_csa"])
def test_dimension_tags_same_on_fast_and_pydicom_paths(tmp_path: Path, vendor: str, monkeypatch) -> None:
    write_dwi(tmp_path / "dwi", vendor, directions=[(0, 0, 0), (0.0, 0.7071068, -0.7071068)], n_slices=3)
    path = str(sorted((tmp_path / "dwi").iterdir())[-1])
    fast = header_row(path)
    monkeypatch.setattr("imaging.dicom.header.read_fast", lambda *a, **k: None)
    slow = header_row(path)
    assert fast["tkey"] == slow["tkey"]
    assert fast["tkey"]["b"] == 1000.0 and ("bvec" in fast["tkey"] or "bvec_ge" in fast["tkey"])


def test_enhanced_dwi_by_frame_diffusion_groups_matches_dcm2niix(tmp_path: Path) -> None:
    write_enhanced_dwi(tmp_path / "in" / "edwi.dcm", iop=OBLIQUE)
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "8x6x3x4" and row.n_instances == 1
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    ours = tmp_path / "ds" / row.volume_path
    assert_same_world(ours, theirs)
    assert_same_diffusion(ours, theirs)


def test_two_extra_dimensions_give_one_4d_volume_per_echo(tmp_path: Path) -> None:
    write_multi_echo_fmri(tmp_path / "in" / "me")
    rows = _ok(run(tmp_path / "in", tmp_path))
    assert [r.shape for r in rows] == ["6x6x3x3", "6x6x3x3"]
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert len(theirs) == 2
    matched = {_matching(tmp_path / "ds" / r.volume_path, theirs) for r in rows}
    assert len(matched) == 2
    for r in rows:
        img = nib.load(tmp_path / "ds" / r.volume_path)
        assert img.header.get_zooms()[3] == pytest.approx(1.5)  # TR, time axis


def test_philips_isotropic_trace_is_its_own_volume(tmp_path: Path) -> None:
    info = write_dwi(tmp_path / "in" / "dwi", "philips", iop=OBLIQUE, trace=True)
    rows = _ok(run(tmp_path / "in", tmp_path))
    n = len(info["directions"]) - 1
    (dwi,) = [r for r in rows if r.n_timepoints == n]
    (trace,) = [r for r in rows if r.n_timepoints == 1]
    assert "component TRACE" in trace.reason and trace.shape == "10x8x4"
    # dcm2niix takes the trace out of the DWI too; its <name>_ADC keeps all volumes, the trace last
    theirs, theirs_trace = sorted(dcm2niix(tmp_path / "in", tmp_path / "d2n"), key=lambda p: "_ADC" in p.name)
    assert theirs_trace.name.endswith("_ADC.nii.gz")
    assert_same_world(tmp_path / "ds" / dwi.volume_path, theirs)
    assert_same_diffusion(tmp_path / "ds" / dwi.volume_path, theirs)
    assert_same_world(tmp_path / "ds" / trace.volume_path, theirs_trace, theirs_volume=n)


def test_incomplete_4d_series_is_an_error_row(tmp_path: Path) -> None:
    write_ge_fmri(tmp_path / "in" / "fmri", n_slices=4, n_time=3)
    (tmp_path / "in" / "fmri" / "fmri0011").unlink()  # the run stopped before the last slice
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert row.status == "error" and "incomplete 4D series" in row.reason and "repeat 2 to 3 times" in row.reason


@pytest.mark.parametrize("normal", [(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)])
def test_sagittal_mosaic_slice_order_from_csa_normal_matches_dcm2niix(tmp_path: Path, normal) -> None:
    # (0,1,0)x(0,0,-1) = (-1,0,0): CSA SliceNormalVector (1,0,0) is the negative-determinant mosaic
    write_mosaic_series(tmp_path / "in" / "sag", n_time=2, iop=(0, 1, 0, 0, 0, -1), slice_normal=normal)
    (row,) = _ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "128x128x48x2"
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(tmp_path / "ds" / row.volume_path, theirs)


def test_philips_asl_label_and_control_are_separate_4d_volumes(tmp_path: Path) -> None:
    written = write_philips_asl(tmp_path / "in" / "asl")
    rows = _ok(run(tmp_path / "in", tmp_path))
    assert len(rows) == 2 and {r.shape for r in rows} == {"7x6x3x3"}
    for r in rows:  # the DICOM is the oracle here: each dynamic of each volume holds its own frames
        lab = 1 if "ASL label" in r.reason else 0
        assert "ASL control" in r.reason or lab
        for dyn in range(3):
            assert_matches_dicom(tmp_path / "ds" / r.volume_path, written[lab][dyn], t=dyn)


def test_field_map_image_types_are_separate_volumes(tmp_path: Path) -> None:
    from tests.fixtures.datasets import stack_positions, write_slices

    pos, uid, study = stack_positions(4), "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.78"
    mag = write_slices(tmp_path / "in" / "fm", pos, series_uid=uid, study_uid=study, names=[f"M{k}" for k in range(4)], seed=1,
                       modality="MR", extra={"ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]})
    b0 = write_slices(tmp_path / "in" / "fm", pos, series_uid=uid, study_uid=study, names=[f"B{k}" for k in range(4)], seed=2,
                      modality="MR", extra={"ImageType": ["ORIGINAL", "PRIMARY", "B0", "B0", "FFE"]})
    rows = _ok(run(tmp_path / "in", tmp_path))
    assert len(rows) == 2
    for r in rows:
        assert_matches_dicom(tmp_path / "ds" / r.volume_path, mag if "component M" in r.reason else b0)


def test_enhanced_magnitude_and_phase_frames_are_separate_volumes(tmp_path: Path) -> None:
    write_enhanced_dwi(tmp_path / "in" / "mp.dcm", directions=[(0, 0, 0), (1, 0, 0)],
                       components=["MAGNITUDE", "PHASE"])
    rows = _ok(run(tmp_path / "in", tmp_path))
    assert len(rows) == 2 and {r.shape for r in rows} == {"8x6x3x2"}
    assert {"component M" in r.reason for r in rows} == {True, False}
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    for r in rows:  # intensities: dcm2niix; b-values: dcm2niix's _ph file says 0 0, the DICOM says 0 800
        match = _matching(tmp_path / "ds" / r.volume_path, theirs)
        if "component M" in r.reason:
            assert_same_diffusion(tmp_path / "ds" / r.volume_path, match)
        else:
            assert np.loadtxt(tmp_path / "ds" / r.volume_path.replace(".nii.gz", ".bval")).tolist() == [0, 800]


def test_mosaic_that_is_not_whole_tiles_is_an_error_row(tmp_path: Path) -> None:
    # nibabel's 0.dcm is a real Siemens DWI mosaic header (48 tiles) with a 256x256 image: not 7x7 tiles
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "0.dcm").write_bytes((NICOM_DATA / "0.dcm").read_bytes())
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "error"
    assert f"file {keyed('0.dcm')}" in row.reason and "(0028,0010) Rows=256" in row.reason and "NumberOfImagesInMosaic=48" in row.reason


def test_real_mosaic_dimension_tags_same_on_fast_and_pydicom_paths(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "b1000.dcm"  # implicit VR, CSA headers, Siemens private (0019,10xx)
    path.write_bytes(gzip.decompress((NICOM_DATA / "siemens_dwi_1000.dcm.gz").read_bytes()))
    fast = header_row(str(path))
    monkeypatch.setattr("imaging.dicom.header.read_fast", lambda *a, **k: None)
    slow = header_row(str(path))
    assert fast["tkey"] == slow["tkey"]
    assert fast["tkey"]["mosaic"] == 48 and fast["tkey"]["b"] == 1000.0 and len(fast["tkey"]["csa_normal"]) == 3
