"""Batch markers: done keyed on model version *and* options; a series that killed the process twice is skipped.

Also: probabilities are resampled (linear) to a finer source grid before argmax, so the
mask of a ball follows the ball, not the blocks of the coarse model grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from imaging.dicom.catalog import CatalogRow
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.pipelines.infer.batch import BatchRunner, BatchSettings, prefetch_workers_from_cpus
from imaging.pipelines.infer.resume import ModelInfo
from tests.unit.test_infer_predict import PRE, threshold_net, write_volume


def _dataset(tmp_path: Path, n: int = 3) -> tuple[Path, list[CatalogRow]]:
    root = tmp_path / "dataset"
    (root / "volumes").mkdir(parents=True)
    rows = []
    for i in range(n):
        write_volume(root / "volumes" / f"s{i}.nii.gz", np.diag([1.5, 1.5, 2.5, 1.0]), shape=(24, 20, 12))
        rows.append(CatalogRow(f"s{i}", "subj", "study", "CT", "ok", volume_path=f"volumes/s{i}.nii.gz"))
    return root, rows


def _run(root: Path, out: Path, rows: list[CatalogRow], options_key: str):
    predictor = SeriesPredictor(threshold_net(), PRE, InferenceOptions(device="cpu", sw_batch_size=1))
    model = ModelInfo("thr", "1", "", {0: "background", 1: "box"}, options_key=options_key)
    settings = BatchSettings(root, out, write_seg=False, overlay=False, prefetch_workers=2)
    return BatchRunner(predictor, model, settings).run(rows)


def test_done_markers_follow_options(tmp_path: Path) -> None:
    root, rows = _dataset(tmp_path)
    out = tmp_path / "out"
    assert _run(root, out, rows, "opts-a").n_ok == 3
    same = _run(root, out, rows, "opts-a")
    assert same.n_skipped_done == 3 and same.n_ok == 0
    other = _run(root, out, rows, "opts-b")  # e.g. tta_flip or seg.type changed
    assert other.n_skipped_done == 0 and other.n_ok == 3
    assert json.loads((out / "done" / "s0.json").read_text())["options_key"] == "opts-b"
    assert not list((out / "attempted").glob("*.json"))  # finished series leave no attempt marker


def test_series_that_crashed_twice_is_skipped_and_reported(tmp_path: Path) -> None:
    root, rows = _dataset(tmp_path)
    out = tmp_path / "out"
    (out / "attempted").mkdir(parents=True)
    # Two earlier processes died while on s1 (their marker counted each start).
    (out / "attempted" / "s1.json").write_text(json.dumps({"attempts": 2}))
    result = _run(root, out, rows, "k")
    assert result.n_ok == 2 and result.n_error == 1
    reason = json.loads((out / "errors" / "s1.json").read_text())["reason"]
    assert "died 2 times" in reason and "attempted/s1.json" in reason
    assert (out / "attempted" / "s1.json").is_file()  # stays skipped until someone removes it
    # One earlier death only: tried again (last), and it succeeds this time.
    (out / "attempted" / "s1.json").write_text(json.dumps({"attempts": 1}))
    assert _run(root, out, rows, "k").n_ok == 1 and not (out / "attempted" / "s1.json").exists()
    assert prefetch_workers_from_cpus() >= 1


def test_probabilities_resampled_linearly_on_fine_source_grid(tmp_path: Path) -> None:
    """A ball on a 0.5 mm source grid, model at 2 mm: the mask's surface follows the ball (linear probs)."""
    shape = (64, 64, 64)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    radius_mm = np.linalg.norm((ijk - 31.5) * 0.5, axis=-1)
    vol = np.where(radius_mm < 10, 1000, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "ball.nii.gz"))
    labels, _ = SeriesPredictor(threshold_net(), PRE, InferenceOptions(device="cpu")).predict(tmp_path / "ball.nii.gz")
    truth = radius_mm < 10
    dice = 2 * (labels.astype(bool) & truth).sum() / (labels.astype(bool).sum() + truth.sum())
    assert dice > 0.93, dice
    # nearest neighbour of a 2 mm label map would make 4-voxel steps: the error band stays thin here
    wrong = labels.astype(bool) ^ truth
    # (measured: nearest on the label map gives dice 0.92 and errors from 8.4 to 11.5 mm; linear 0.94, 9.0-10.7)
    assert radius_mm[wrong].min() > 8.8 and radius_mm[wrong].max() < 11.0
