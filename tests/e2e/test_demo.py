"""`make demo` end to end, exactly as a user runs it (`python -m imaging.demo`).

The demo model must really learn: validation Dice >= 0.80 on the largest organ
(liver) in the MLflow run, and on the held-out export it never saw, the SEG
written by `imaging infer` must agree with the ground truth labels. Every output
and the MLflow store must audit clean of the export's PHI canaries.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import mlflow
import nibabel as nib
import numpy as np
import pytest

from imaging.audit import build_needles, scan_mlflow, scan_paths
from imaging.synth.canaries import CANARY_TOKEN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("make-demo")
    env = {**os.environ, "IMAGING_ROOT": str(root)}
    env.pop("IMAGING_DEID_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "imaging.demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "make demo: done" in proc.stdout
    (root / "demo.log").write_text(proc.stdout + proc.stderr)
    return root


def test_the_demo_model_really_learns(demo: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{demo / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo_seg")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    liver = client.get_metric_history(runs[0].info.run_id, "val_dice_liver")
    assert max(m.value for m in liver) >= 0.80
    model = client.get_registered_model("demo_seg")
    assert {"candidate", "champion"} <= set(model.aliases)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def test_heldout_predictions_match_ground_truth_and_seg_matches_nifti(demo: Path) -> None:
    pred = demo / "demo" / "predictions"
    rows = list(csv.DictReader((pred / "report.csv").read_text().splitlines()))
    assert rows and all(r["status"] == "ok" for r in rows), rows
    names = json.loads((pred / "work" / "dataset" / "dataset.json").read_text())["labels"]
    truth_liver = int(next(v for v, name in names.items() if name == "liver"))
    labelled = 0
    for row in rows:
        key = row["series_key"]
        seg_nii = nib.load(pred / key / "seg.nii.gz")
        mask = np.asarray(seg_nii.dataobj)
        truth_path = pred / "work" / "dataset" / "labels" / f"{key}.nii.gz"
        if truth_path.is_file():
            truth = nib.load(truth_path)
            assert np.allclose(truth.affine, seg_nii.affine, atol=1e-3)
            truth_arr = np.asarray(truth.dataobj)
            assert dice(mask == 1, truth_arr == truth_liver) >= 0.80, f"liver Dice on held-out series {key}"
            labelled += 1
        seg = hd.seg.segread(pred / key / "seg.dcm")
        names = {seg.get_segment_description(n).SegmentLabel.lower() for n in seg.segment_numbers}
        assert "liver" in names
        # The report's volume (mL) is the NIfTI voxel count times the voxel volume.
        voxel_ml = float(np.prod(seg_nii.header.get_zooms()[:3])) / 1000
        assert float(row["volume_ml_liver"]) == pytest.approx((mask == 1).sum() * voxel_ml, rel=1e-3)
    assert labelled >= 3


def test_demo_outputs_and_mlflow_audit_clean(demo: Path) -> None:
    d = demo / "demo"
    needles = build_needles(
        [CANARY_TOKEN],
        [d / "dataset.private" / "links.csv"],
        [d / "export" / "manifest.json", d / "heldout" / "manifest.json"],
    )
    assert scan_paths([d / "export" / "manifest.json"], needles), "the needles must find the PHI at its source"
    outputs = [d / "dataset", d / "predictions", demo / "runs", demo / "logs", demo / "demo.log"]
    assert scan_paths([o for o in outputs if o.exists()], needles) == []
    assert scan_mlflow(f"sqlite:///{demo / 'mlflow' / 'mlflow.db'}", needles) == []


def test_the_demo_model_is_found_from_a_subfolder(demo: Path, tmp_path: Path) -> None:
    """`make demo` marks its root a project: `imaging infer` from a subfolder finds its store."""
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGING_ROOT", "MLFLOW_TRACKING_URI")}
    sub = demo / "demo" / "predictions"
    out = tmp_path / "again"
    proc = subprocess.run([sys.executable, "-m", "imaging", "infer", "model=models:/demo_seg@champion",
                           f"input={demo / 'demo' / 'heldout'}", f"output_dir={out}", "demo_key=true",
                           "overlay=false"],
                          cwd=sub, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert rows and all(r["status"] == "ok" for r in rows)


def test_the_demo_model_segments_one_series_per_study_with_seg_and_rtstruct(demo: Path) -> None:
    """Issue 19's "done when": the registered rule picks exactly one series per CT study of
    the held-out export (the thin soft-tissue one), names the rejected ones by rule, and
    each selected series has a SEG and an RTSTRUCT."""
    pred = demo / "demo" / "predictions"
    manifest = json.loads((demo / "demo" / "heldout" / "manifest.json").read_text())
    ct_studies = {e["study_instance_uid"] for e in manifest["series"] if e["modality"] == "CT"}
    studies = list(csv.DictReader((pred / "studies.csv").read_text().splitlines()))
    selected = [r for r in studies if r["status"] == "selected"]
    assert len(selected) == len(ct_studies)
    for row in selected:
        assert row["rule"] == "ct_axial_soft" and ";" not in row["selected"]
        assert "slice_thickness" in row["rejected"]  # the thick recon, rejected by rule name
        key = row["selected"]
        assert (pred / key / "seg.dcm").is_file() and (pred / key / "rtstruct.dcm").is_file()
    report = {r["series_key"] for r in csv.DictReader((pred / "report.csv").read_text().splitlines())}
    assert report == {r["selected"] for r in selected}
