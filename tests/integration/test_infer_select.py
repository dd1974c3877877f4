"""The selection rule travels with the registered model; SEG and RTSTRUCT of the chosen series agree.

A tiny network is registered (real MLflow SQLite store) with the ``ct_axial_soft``
rule; a fresh ``imaging infer`` (a subprocess: the CLI, nothing but the model URI
and the input) on a synthetic PACS export then runs on exactly one series per CT
study (the thin portal-venous one, known from the generator's manifest), writes
the study report with the rejected series and the rule names, and an RTSTRUCT
that rasterises back to the SEG's frames. A config override replaces the rule; a
malformed rule is refused with exit 2 naming the key.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pydicom
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from imaging.dicom.rtstruct import rasterise_contours, read_rtstruct
from imaging.dicom.seg_read import read_seg_frames
from imaging.dicom.source_frames import frame_geometry
from imaging.keys import Pseudonymizer
from imaging.models.registry import build_network
from imaging.pipelines.infer.run import run_inference
from imaging.resources import CONF_DIR
from imaging.selection.rules import parse_rule
from imaging.synth import generate
from imaging.tracking.registry import load_bundle, register_model
from imaging.tracking.runs import embedded_uri

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PSEUDO = Pseudonymizer.from_config(demo_key=True)
SUBJECTS = 2
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [32, 32, 16]}
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}


def constant_liver(net_cfg: dict[str, Any]) -> torch.nn.Module:
    """A network that calls every voxel liver: zero weights, the last bias favours label 1.

    An untrained random network predicts salt-and-pepper masks (100k+ contours per
    series); a constant one gives a known mask that touches the border (a flag).
    """
    net = build_network(net_cfg)
    last = None
    with torch.no_grad():
        for module in net.modules():
            for name, param in module.named_parameters(recurse=False):
                param.zero_()
                if name == "bias" and param.shape == (4,):
                    last = param
        assert last is not None
        last.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    return net


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("select_model")
    manifest = generate(root / "export", subjects=SUBJECTS, seed=21, cases=["localizer", "gantry_tilt"],
                        dicomdir=False)
    (root / "mlflow").mkdir()
    previous = mlflow.get_tracking_uri()
    uri = embedded_uri(root / "mlflow" / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("train", artifact_location=(root / "mlflow" / "artifacts").as_uri())
    rule = parse_rule(yaml.safe_load((CONF_DIR / "inference/select/ct_axial_soft.yaml").read_text())).source
    torch.manual_seed(0)
    net_cfg = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
               "strides": [2], "num_res_units": 0}
    with mlflow.start_run(experiment_id=exp):
        register_model(constant_liver(net_cfg), network_config=net_cfg, preprocessing=PRE, labels=LABELS,
                       task="segmentation", name="tiny_sel", alias="champion", series_rule=rule)
    yield {"root": root, "manifest": manifest, "uri": uri}
    mlflow.set_tracking_uri(previous)


def _cli(env: dict[str, Any], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "IMAGING_ROOT": str(env["root"]), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "imaging", "infer", "model=models:/tiny_sel@champion",
                           f"input={env['root'] / 'export'}", f"output_dir={out}", "demo_key=true", *extra],
                          cwd=env["root"], env=run_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fresh(env: dict[str, Any]) -> Path:
    out = env["root"] / "out"
    proc = _cli(env, out, "output.rtstruct=true", "output.preview=true", "inference.sw_batch_size=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_bundle_carries_the_rule(env: dict[str, Any]) -> None:
    bundle = load_bundle("models:/tiny_sel@champion", tracking_uri=env["uri"])
    assert bundle.selection is not None and bundle.selection["name"] == "ct_axial_soft"


def test_fresh_infer_applies_the_model_rule(env: dict[str, Any], fresh: Path) -> None:
    series = env["manifest"]["series"]
    thin = {PSEUDO.key(e["series_instance_uid"], "series") for e in series
            if e["subject"] <= SUBJECTS and e["description"] == "CT ABDOMEN PV 5.0"}
    report = {r["series_key"] for r in csv.DictReader((fresh / "report.csv").open())}
    assert report == thin  # exactly one series per CT study: the thin soft-tissue axial one
    studies = list(csv.DictReader((fresh / "studies.csv").open()))
    assert len(studies) == len({e["study_instance_uid"] for e in series})
    ct_rows = [r for r in studies if r["status"] == "selected"]
    assert {r["selected"] for r in ct_rows} == thin
    for row in ct_rows:
        assert "thin (slice_thickness 10" in row["rejected"]  # the thick recon, by rule name
        assert row["rule"] == "ct_axial_soft" and "seg.dcm" in row["outputs"] and "rtstruct.dcm" in row["outputs"]
    tricky = next(r for r in studies if r["study_key"] == PSEUDO.key(
        next(e["study_instance_uid"] for e in series if "localizer" in e["flags"]), "study"))
    assert tricky["status"] == "no_match" and "ingest (skipped: localizer" in tricky["rejected"]
    mr = [r for r in studies if r["status"] == "no_match" and r is not tricky]
    assert len(mr) == SUBJECTS and all("ct," in r["rejected"] for r in mr)
    assert all((fresh / "previews" / f"{r['study_key']}.png").is_file() for r in ct_rows)


def test_seg_and_rtstruct_read_back_to_the_same_mask(fresh: Path) -> None:
    keys = [r["series_key"] for r in csv.DictReader((fresh / "report.csv").open())]
    private = fresh.with_name(fresh.name + ".private")
    for key in keys:
        seg = pydicom.dcmread(fresh / key / "seg.dcm", stop_before_pixels=True)
        names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
        # One segment: highdicom puts its identification in the shared groups (read_seg_frames says 0).
        seg_masks = {(f.referenced_sop_instance_uid, names[f.segment_number or min(names)]): f.mask.astype(bool)
                     for f in read_seg_frames(fresh / key / "seg.dcm")}
        assert len(names) == 1 or all(f.segment_number for f in read_seg_frames(fresh / key / "seg.dcm"))
        # Source geometry per (pseudonymised) instance UID, read from the hospital-side sources.
        files = json.loads((private / "sources" / f"{key}.json").read_text())["files"]
        geoms = {}
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            geoms[PSEUDO.uid(str(ds.SOPInstanceUID))] = frame_geometry(ds)
        contours: dict[tuple[str, str], list[np.ndarray]] = {}
        for c in read_rtstruct(fresh / key / "rtstruct.dcm"):
            contours.setdefault((c.sop_instance_uid, c.roi), []).append(c.points)
        assert set(contours) == set(seg_masks), key  # same slices, same structures
        for name in set(names.values()):
            inter = total = 0
            for (uid, roi), pts in contours.items():
                if roi != name:
                    continue
                got, want = rasterise_contours(pts, geoms[uid]), seg_masks[(uid, roi)]
                inter += int(np.logical_and(got, want).sum())
                total += int(got.sum()) + int(want.sum())
            assert 2 * inter / total >= 0.95, (key, name)


def test_config_override_replaces_the_model_rule(env: dict[str, Any], fresh: Path, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=[
            # The dataset the CLI run ingested, with its private side: no second ingest.
            "model_uri=models:/tiny_sel@champion", f"input={fresh / 'work' / 'dataset'}",
            f"private_dir={fresh.with_name(fresh.name + '.private')}", f"output_dir={tmp_path / 'o'}",
            f"paths.root_dir={env['root']}", "demo_key=true", "inference/select@select=any_series",
            "inference.labels=[liver]", "seg.enabled=false", "overlay=false", "tracking.enabled=false"])
    outcome = run_inference(cfg)
    studies = list(csv.DictReader((tmp_path / "o" / "studies.csv").open()))
    assert {r["rule"] for r in studies} == {"any_series"}
    ct_selected = [r["selected"].split(";") for r in studies if r["status"] == "selected"]
    assert any(len(s) >= 2 for s in ct_selected)  # thin and thick both run now
    assert outcome.model.labels == {0: "background", 1: "liver"}
    import nibabel as nib

    for key in {k for s in ct_selected for k in s}:
        mask = np.asarray(nib.load(str(tmp_path / "o" / key / "seg.nii.gz")).dataobj)
        assert set(np.unique(mask).tolist()) <= {0, 1}


def test_malformed_rule_exits_2_naming_the_key(env: dict[str, Any], tmp_path: Path) -> None:
    proc = _cli(env, tmp_path / "bad", "select.per_study=three")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "per_study" in proc.stderr and "three" in proc.stderr
    assert not (tmp_path / "bad" / "report.csv").exists()
