"""``uneven=keep``: varying slice spacing without any interpolation (issue 27, item 5).

Planned variable spacing is equalized by default (as dcm2niix does); ``keep`` is the opt-out that
keeps the acquired slices: one volume per run of regular spacing. The oracle is the DICOM
itself: every written slice's pixels at its own ImagePositionPatient in exactly the volumes of
its run, each volume's slice spacing the run's own gap.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.fixtures.datasets import AXIAL, oblique, write_slices
from tests.unit.test_ingest_geometry import assert_matches_dicom, run
from tests.unit.test_volume_planned_spacing import HEAD_CT, _positions


def _along_normal(nii: Path, iop) -> list[float]:
    """The output slices' positions along the slice normal (LPS), from the NIfTI affine."""
    img = nib.load(nii)
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    ras = img.affine @ np.stack([np.zeros(img.shape[2]), np.zeros(img.shape[2]), np.arange(img.shape[2]),
                                 np.ones(img.shape[2])])
    lps = ras[:3].T * np.array([-1.0, -1.0, 1.0])
    return [round(float(v), 2) for v in lps @ n - np.dot(np.array([-4.0, -3.0, 20.0]), n)]


@pytest.mark.parametrize(("d", "runs"), [
    (HEAD_CT, [HEAD_CT[:5], HEAD_CT[5:]]),  # 4 x 2.5 mm, a 3.75 mm transition, 3 x 5 mm
    ([0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.0], [[0.0, 2.5, 5.0, 7.5], [12.5, 15.0, 17.5, 20.0]]),  # missing
    ([0.0, 2.0, 4.0, 7.0, 10.0, 13.0], [[0.0, 2.0, 4.0], [4.0, 7.0, 10.0, 13.0]]),  # runs meet at 4 mm
])
@pytest.mark.parametrize("iop", [AXIAL, oblique(20.0)])
def test_keep_writes_each_spacing_run_of_native_slices(tmp_path: Path, d, runs, iop) -> None:
    written = write_slices(tmp_path / "in" / "s", _positions(d, iop), iop=iop, shape=(6, 5), spacing=(1.0, 1.0))
    summary = run(tmp_path / "in", tmp_path, uneven="keep")
    assert summary.counts == {"ok": len(runs)}, [(r.status, r.reason) for r in summary.rows]
    rows = sorted(summary.rows, key=lambda r: r.reason)  # "spacing run 1 of n", "spacing run 2 of n"
    for i, (r, run_d) in enumerate(zip(rows, runs, strict=True)):
        assert f"spacing run {i + 1} of {len(runs)}: {len(run_d)} native slices" in r.reason
        assert "not interpolated (config uneven=keep)" in r.reason and not r.slice_spacing_uneven
        nii = tmp_path / "ds" / r.volume_path
        assert _along_normal(nii, iop) == pytest.approx(run_d, abs=0.02)  # its own positions, nothing between
        assert nib.load(nii).header.get_zooms()[2] == pytest.approx(run_d[1] - run_d[0], abs=1e-3)
        slices = [w for w, z in zip(written, d, strict=True) if z in run_d]
        assert r.n_instances == len(slices) == len(run_d)
        assert_matches_dicom(nii, slices)  # each slice's stored values at its own position


def test_keep_refuses_a_slice_that_is_in_no_run(tmp_path: Path) -> None:
    write_slices(tmp_path / "in" / "s", _positions([0.0, 2.5, 5.0, 7.5, 12.5, 15.0], AXIAL))
    (row,) = run(tmp_path / "in", tmp_path, uneven="keep").rows
    assert row.status == "error"
    assert "slice(s) at 12.5, 15 mm from the first along the normal belong to no run of regular spacing" in row.reason


def test_keep_leaves_a_regular_stack_one_volume(tmp_path: Path) -> None:
    written = write_slices(tmp_path / "in" / "s", _positions([0.0, 3.0, 6.0, 9.0], AXIAL))
    (row,) = run(tmp_path / "in", tmp_path, uneven="keep").rows
    assert row.status == "ok" and "spacing run" not in row.reason and row.shape == "7x6x4"
    assert_matches_dicom(tmp_path / "ds" / row.volume_path, written)
