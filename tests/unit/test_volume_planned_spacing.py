"""Planned variable slice spacing is equalized by default; a missing slice stays refused
(issue 27, item 5, first bullet).

Sequential head CT: the posterior fossa thin (2.5 mm), a transition, the cerebrum thick
(5 mm), with or without gantry tilt. The oracles: a linear world function sampled at each
output voxel's own world position (``assert_world_ramp``: linear interpolation is exact
for it) and dcm2niix's equalized output (``_Eq_1``), which must match ours voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.geometry import planned_runs
from tests.fixtures.datasets import AXIAL, oblique, write_slices
from tests.fixtures.vendor_mr import dcm2niix
from tests.unit.test_ingest_dims import _voxel_map
from tests.unit.test_ingest_geometry import assert_world_ramp, only_ok, run

HEAD_CT = [0.0, 2.5, 5.0, 7.5, 10.0, 13.75, 18.75, 23.75, 28.75]  # 4 x 2.5, 3.75, 3 x 5 mm


def _positions(d: list[float], iop, tilt_mm_per_mm: float = 0.0) -> list[np.ndarray]:
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    n = np.cross(r, c)
    return [np.array([-4.0, -3.0, 20.0]) + z * n + z * tilt_mm_per_mm * c for z in d]


def test_planned_head_ct_spacing_is_equalized_as_dcm2niix_does(tmp_path: Path) -> None:
    write_slices(tmp_path / "in" / "s", _positions(HEAD_CT, AXIAL), shape=(8, 8), spacing=(1.0, 1.0),
                 world_fn=lambda xyz: 1000.0 + 9.0 * xyz[..., 2])
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.slice_spacing_uneven
    assert "planned variable slice spacing (4 x 2.5 mm, 1 x 3.75 mm, 3 x 5 mm)" in row.reason
    assert "equalized to 2.396 mm" in row.reason
    ours = tmp_path / "ds" / row.volume_path
    assert row.shape == "8x8x13" and row.n_instances == 9
    theirs = [p for p in dcm2niix(tmp_path / "in", tmp_path / "d2n") if "_Eq_" in p.name]
    assert len(theirs) == 1, "dcm2niix equalizes this stack"
    a, b = nib.load(ours), nib.load(theirs[0])
    idx = _voxel_map(a, b)  # the same world grid
    mine = np.asarray(a.dataobj, dtype=np.float64).ravel()
    their = np.asarray(b.dataobj, dtype=np.float64)[idx[:, 0], idx[:, 1], idx[:, 2]]
    np.testing.assert_allclose(mine, their, atol=1.0)  # both round interpolated integers


@pytest.mark.parametrize("iop", [AXIAL, oblique(20.0)])
def test_planned_spacing_with_gantry_tilt_is_resampled_in_world_coordinates(tmp_path: Path, iop) -> None:
    # A GE head CT: 12 deg tilt (0.21 mm in-plane drift per mm along the normal).
    write_slices(tmp_path / "in" / "s", _positions(HEAD_CT, iop, np.tan(np.radians(12.0))), iop=iop,
                 shape=(16, 12), spacing=(1.0, 1.0), world_fn=lambda xyz: 1000.0 + 4.0 * xyz[..., 0]
                 - 3.0 * xyz[..., 1] + 2.0 * xyz[..., 2])
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert "gantry tilt" in row.reason and "equalized" in row.reason and row.slice_spacing_uneven
    assert row.tilt_deg == pytest.approx(12.0, abs=0.05)
    assert_world_ramp(tmp_path / "ds" / row.volume_path)


def test_missing_slice_in_a_planned_stack_stays_refused(tmp_path: Path) -> None:
    # 5 mm where the 2.5 mm run should go on (a slice of the thin run is missing), then 5 mm runs.
    d = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.0]
    write_slices(tmp_path / "in" / "s", _positions(d, AXIAL))
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "error" and "1 missing slice" in row.reason and "uneven=refuse" in row.reason


@pytest.mark.parametrize(("gaps", "planned"), [
    ([2.5, 2.5, 2.5, 5.0, 5.0, 5.0], True),            # thin then thick, joined directly
    ([2.5, 2.5, 3.75, 5.0, 5.0], True),                # joined by one transition gap
    ([2.5, 2.5, 2.5, 5.0, 2.5, 2.5], False),           # 2 x 2.5: a missing slice
    ([5.0, 5.0, 7.5, 2.5, 2.5], False),                # 3 x 2.5 beside the thin run: missing slices
    ([2.5, 2.5, 3.1, 2.5, 2.5], False),                # a stray gap between runs of one spacing
    ([2.5, 2.5, 3.3, 4.1, 5.0, 5.0], False),           # two stray gaps in a row
    ([2.0, 2.4, 2.9, 3.5, 4.2], False),                # no regular run at all
])
def test_what_counts_as_planned(gaps: list[float], planned: bool) -> None:
    assert (planned_runs(np.asarray(gaps)) is not None) == planned
