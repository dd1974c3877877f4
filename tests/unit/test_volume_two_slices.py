"""Two-slice stacks are written, and flagged (issue 27, item 5, third bullet).

Two positions define the slice spacing; the catalog's shape (``n_slices`` for the
selection rules) and the reason say there are two. The oracles: the DICOM values
and positions themselves (``assert_matches_dicom``) and dcm2niix, which converts
such stacks, 3D and 4D (GE DWI, 2 slices x 7 volumes) with its b-values and vectors.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from imaging.dicom.catalog import read_catalog
from imaging.selection.features import series_features
from tests.fixtures.datasets import oblique, stack_positions, world_ramp, write_slices
from tests.fixtures.vendor_mr import DIRECTIONS, dcm2niix, write_dwi
from tests.unit.test_ingest_dims import assert_same_diffusion, assert_same_world
from tests.unit.test_ingest_geometry import assert_matches_dicom, only_ok, run


def test_two_slice_ct_is_written_with_its_one_gap_as_spacing(tmp_path: Path) -> None:
    iop = oblique(25.0)
    slices = write_slices(tmp_path / "in" / "s", stack_positions(2, iop=iop, gap=3.5), iop=iop, shape=(8, 9),
                          spacing=(0.7, 0.9), world_fn=world_ramp)
    row = only_ok(run(tmp_path / "in", tmp_path))
    assert row.shape == "9x8x2" and row.n_instances == 2
    assert "only 2 slice positions (0020,0032)" in row.reason and not row.slice_spacing_uneven
    nii = tmp_path / "ds" / row.volume_path
    assert_matches_dicom(nii, slices)
    assert np.allclose(nib.load(nii).header.get_zooms(), (0.9, 0.7, 3.5), atol=1e-4)
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(nii, theirs)
    # What a selection rule reads (qc.min_slices): two slices.
    (cat,) = read_catalog(tmp_path / "ds")
    assert series_features(cat, tmp_path / "ds", tmp_path / "private").n_slices == 2


def test_ge_dwi_of_two_slices_and_seven_volumes_is_one_4d_volume(tmp_path: Path) -> None:
    info = write_dwi(tmp_path / "in" / "dwi", "ge", n_slices=2, directions=DIRECTIONS)
    assert len(info["directions"]) == 7
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert row.status == "ok", row.reason
    assert row.shape == "10x8x2x7" and row.n_timepoints == 7 and row.n_instances == 14
    assert "only 2 slice positions" in row.reason
    ours = tmp_path / "ds" / row.volume_path
    (theirs,) = dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert_same_world(ours, theirs)
    assert_same_diffusion(ours, theirs)


def test_one_slice_is_still_no_stack(tmp_path: Path) -> None:
    write_slices(tmp_path / "in" / "s", [[0.0, 0.0, 0.0]])
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "skipped" and "fewer than 2 slices per stack" in row.reason and not row.volume_path
