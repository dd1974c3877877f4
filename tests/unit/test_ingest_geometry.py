"""Geometry corpus: every volume is checked against the DICOM it came from.

For sampled pixels (r, c) of each written slice, the world position computed
from ImagePositionPatient / ImageOrientationPatient / PixelSpacing (LPS) must
equal the NIfTI affine applied to the voxel that holds that pixel (after
LPS -> RAS), and the voxel must hold the pixel's rescaled value.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.catalog import read_catalog
from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    WrittenSlice,
    oblique,
    stack_positions,
    world_ramp,
    write_slices,
)

PS = Pseudonymizer(b"unit-test-secret-0123456789")


def run(export: Path, tmp: Path, **kw):
    return ingest(export, tmp / "ds", PS, private_dir=tmp / "private", workers=1, progress=False, **kw)


def only_ok(summary):
    ok = [r for r in summary.rows if r.status == "ok"]
    assert len(ok) == 1, summary.rows
    return ok[0]


def assert_matches_dicom(nii: Path, slices: list[WrittenSlice], *, t: int | None = None) -> None:
    """Sampled pixels of every slice sit at affine @ voxel and hold their rescaled value."""
    img = nib.load(nii)
    sform, scode = img.header.get_sform(coded=True)
    qform, qcode = img.header.get_qform(coded=True)
    assert (scode, qcode) == (1, 1)
    np.testing.assert_allclose(sform, qform, atol=1e-4)
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(sform)
    rows, cols = slices[0].pixels.shape
    for s in slices:
        r_dir, c_dir = np.asarray(s.iop[:3]), np.asarray(s.iop[3:])
        for r, c in [(0, 0), (rows - 1, 0), (0, cols - 1), (rows - 1, cols - 1), (rows // 2, cols // 3)]:
            lps = np.asarray(s.ipp) + c * s.spacing[1] * r_dir + r * s.spacing[0] * c_dir
            ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
            ijk = (inv @ ras)[:3]
            np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-3)
            i, j, k = (int(v) for v in np.rint(ijk))
            assert (i, j) == (c, r)
            value = data[i, j, k] if t is None else data[i, j, k, t]
            assert value == pytest.approx(s.pixels[r, c] * s.slope + s.intercept, abs=1e-3)


def assert_world_ramp(nii: Path, *, slope: float = 1.0, intercept: float = -1024.0, atol: float = 1.01) -> None:
    """Each voxel of a resampled volume holds the world function at its own world position."""
    img = nib.load(nii)
    data = np.asarray(img.dataobj).astype(float)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in data.shape[:3]], indexing="ij")
    ras = img.affine @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    lps = np.stack([-ras[0], -ras[1], ras[2]], axis=-1)
    expected = np.rint(world_ramp(lps)) * slope + intercept
    got = data.ravel()
    # Outside the acquired field of view holds the fill value; in the half-pixel band around the
    # outermost pixel centres the edge pixel's value holds (nearest), so compare one voxel further in.
    from scipy import ndimage

    filled = data <= data.min()
    band = ndimage.binary_dilation(filled, structure=np.ones((3, 3, 1), bool), border_value=1)
    inside = ~band.ravel()
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got[inside], expected[inside], atol=atol)


POSITIONS = {  # typical axial IOPs per patient position, plus the other planes
    "HFS": AXIAL, "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "HFP": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "FFP": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), "HFDR": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0),
    "HFDL": (0.0, 1.0, 0.0, -1.0, 0.0, 0.0), "FFDR": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
}


@pytest.mark.parametrize(
    ("name", "iop", "position"),
    [(f"axial-{p}", iop, p) for p, iop in POSITIONS.items()]
    + [("coronal", CORONAL, "HFS"), ("sagittal", SAGITTAL, "HFS"), ("oblique", oblique(25.0), "HFS")],
)
def test_orientation_and_patient_position(tmp_path: Path, name: str, iop, position: str) -> None:
    # Instance numbers and file names deliberately disagree with the slice order.
    pos = stack_positions(6, iop=iop, gap=2.5)
    order = [3, 0, 5, 1, 4, 2]
    slices = write_slices(tmp_path / "in" / "s", [pos[i] for i in order], iop=iop, patient_position=position,
                          instance_numbers=[6, 2, 1, 5, 3, 4], names=[f"Z{n}" for n in (9, 1, 5, 3, 7, 2)])
    summary = run(tmp_path / "in", tmp_path)
    row = only_ok(summary)
    assert row.shape == "7x6x6" and row.spacing == "0.6x0.8x2.5"
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, slices)


def test_rescale_float_slope_gives_float32(tmp_path: Path) -> None:
    slices = write_slices(tmp_path / "in" / "s", stack_positions(4), slope=[0.5, 0.25, 1.5, 2.0], intercept=3.0)
    row = only_ok(run(tmp_path / "in", tmp_path))
    img = nib.load(tmp_path / "ds" / row.volume_path)
    assert img.get_data_dtype() == np.float32
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, slices)


def test_integer_rescale_gives_int16(tmp_path: Path) -> None:
    slices = write_slices(tmp_path / "in" / "s", stack_positions(4), dtype=np.uint16, intercept=-1024.0)
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert nib.load(tmp_path / "ds" / row.volume_path).get_data_dtype() == np.int16
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, slices)


@pytest.mark.parametrize("iop", [AXIAL, oblique(30.0)])
def test_gantry_tilt_resampled_in_world_coordinates(tmp_path: Path, iop) -> None:
    col_dir = np.asarray(iop[3:])
    # Each slice starts 0.5 mm further along the column direction: a 14.0 deg tilt at 2 mm gap.
    pos = stack_positions(12, iop=iop, gap=2.0, drift=0.5 * col_dir)
    write_slices(tmp_path / "in" / "s", pos, iop=iop, shape=(16, 12), spacing=(1.0, 1.0), world_fn=world_ramp)
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.tilt_deg == pytest.approx(np.degrees(np.arctan(0.5 / 2.0)), abs=0.05)
    assert "gantry tilt" in row.reason and "resampled" in row.reason
    img = nib.load(tmp_path / "ds" / row.volume_path)
    # Orthogonal output grid: the third axis is the slice normal, not the tilted stack direction.
    axes = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-6)
    assert_world_ramp(tmp_path / "ds" / row.volume_path)


def test_gantry_tilt_refused_by_config(tmp_path: Path) -> None:
    pos = stack_positions(5, gap=2.0, drift=(0.0, 0.5, 0.0))
    write_slices(tmp_path / "in" / "s", pos)
    summary = run(tmp_path / "in", tmp_path, tilt="refuse")
    (row,) = summary.rows
    assert row.status == "error" and "gantry tilt" in row.reason and "refuse" in row.reason
    assert summary.failed


def test_uneven_spacing_resampled(tmp_path: Path) -> None:
    pos = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 7.0, 9.0, 11.0)]
    write_slices(tmp_path / "in" / "s", pos, shape=(8, 8), spacing=(1.0, 1.0), world_fn=world_ramp)
    row = only_ok(run(tmp_path / "in", tmp_path, uneven="resample"))
    assert row.slice_spacing_uneven and "uneven slice spacing" in row.reason and "uneven=resample" in row.reason
    assert row.spacing.endswith("x2")
    assert_world_ramp(tmp_path / "ds" / row.volume_path)


def test_uneven_spacing_refused_by_default(tmp_path: Path) -> None:
    pos = [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 7.0, 9.0)]
    write_slices(tmp_path / "in" / "s", pos)
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "error" and "uneven" in row.reason and "(0020,0032)" in row.reason


def test_missing_slice_is_an_error_row_unless_resampling_is_asked_for(tmp_path: Path) -> None:
    # Changed: a missing slice used to be interpolated into an "ok" volume by default.
    pos = [p for k, p in enumerate(stack_positions(8, gap=2.5)) if k != 4]
    write_slices(tmp_path / "in" / "s", pos, shape=(8, 8), spacing=(1.0, 1.0), world_fn=world_ramp)
    summary = run(tmp_path / "in", tmp_path)
    (err,) = summary.rows
    assert err.status == "error" and "1 missing slice" in err.reason and "(0020,0032)" in err.reason
    assert summary.failed and not err.volume_path
    row = only_ok(run(tmp_path / "in", tmp_path, uneven="resample"))
    assert "1 missing slice" in row.reason and row.slice_spacing_uneven and "uneven=resample" in row.reason
    assert row.shape == "8x8x8" and row.n_instances == 7
    assert_world_ramp(tmp_path / "ds" / row.volume_path)


def test_identical_duplicates_dropped_different_duplicates_refused(tmp_path: Path) -> None:
    pos = stack_positions(5)
    slices = write_slices(tmp_path / "in" / "a", pos, seed=3)
    (tmp_path / "in" / "a" / "COPY").write_bytes(slices[2].path.read_bytes())
    uid = "1.2.3.4.5.6.7"
    write_slices(tmp_path / "in" / "b", [*pos, pos[1]], series_uid=uid, seed=4)
    summary = run(tmp_path / "in", tmp_path)
    by_status = {r.status: r for r in summary.rows}
    assert "duplicate" in by_status["ok"].reason
    assert_matches_dicom(tmp_path / "ds" / by_status["ok"].volume_path, slices)
    err = by_status["error"]
    assert "duplicate slice position (0020,0032)" in err.reason
    assert "file-" + PS.key("b/IM0001", "file") in err.reason and "b/IM0001" not in err.reason


def test_catalog_round_trips(tmp_path: Path) -> None:
    write_slices(tmp_path / "in" / "s", stack_positions(4))
    run(tmp_path / "in", tmp_path)
    (row,) = read_catalog(tmp_path / "ds")
    assert row.status == "ok" and row.orientation == "LPS" and row.n_timepoints == 1
