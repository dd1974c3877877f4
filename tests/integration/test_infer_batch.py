"""`imaging infer` end to end with a model from a real MLflow registry (SQLite store).

The export is the synthetic generator's, with its tricky CT cases (oblique, gantry
tilt, feet-first/prone/decubitus, JPEG 2000, a truncated file, missing geometry),
plus a multi-frame (enhanced) CT written with pydicom.
Checks: 3 shards cover every series once; the SEG of every series lines up with
the NIfTI prediction on the source grid; a killed run resumes without duplicates;
a bad series is recorded and the batch goes on; the MLflow run holds no PHI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hydra import compose, initialize_config_dir

from imaging.dicom.seg_read import read_seg_frames
from imaging.dicom.source_frames import load_source
from imaging.keys import Pseudonymizer, subject_identity
from imaging.models.registry import build_network
from imaging.pipelines.infer.report import read_report
from imaging.pipelines.infer.run import run_inference
from imaging.resources import CONF_DIR
from imaging.synth import generate
from imaging.synth.canaries import CANARY_TOKEN
from imaging.tracking.registry import register_model
from tests.unit.test_seg_writer import CANARY, _expected, write_source

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SYNTH_CASES = ["oblique", "gantry_tilt", "position_ffs", "position_hfp", "position_ffp", "position_hfdl",
               "compressed_j2k", "truncated", "missing_geometry"]
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [32, 32, 16]}
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
PSEUDO = Pseudonymizer.from_config(demo_key=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("infer")
    export = root / "export"
    generate(export, subjects=1, seed=3, cases=SYNTH_CASES, dicomdir=False)
    write_source(export / "extra" / "multiframe", "multiframe", rows=40, cols=40, patient="mf").unlink()
    mlflow_dir = root / "mlflow"
    mlflow_dir.mkdir()
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_dir / 'mlflow.db'}")
    exp = mlflow.create_experiment("train", artifact_location=(mlflow_dir / "artifacts").as_uri())
    torch.manual_seed(0)
    net_cfg = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
               "strides": [2], "num_res_units": 0}
    with mlflow.start_run(experiment_id=exp):
        register_model(build_network(net_cfg), network_config=net_cfg, preprocessing=PRE, labels=LABELS,
                       task="segmentation", name="tiny", alias="champion")
    yield {"root": root, "export": export}
    mlflow.set_tracking_uri(previous_uri)


def config(env: dict[str, Path], out: Path, *extra: str, source: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("infer", overrides=[
            "model_uri=models:/tiny@champion", f"input={source or env['export']}", f"output_dir={out}",
            f"paths.root_dir={env['root']}", "demo_key=true", "inference.sw_batch_size=2", *extra])


@pytest.fixture(scope="module")
def sharded(env: dict[str, Path]) -> Path:
    out = env["root"] / "out"
    for i in range(3):
        outcome = run_inference(config(env, out, f"shard.index={i}", "shard.count=3"))
        assert outcome.exit_code == 0  # fail_on_error=false: the truncated file does not fail the batch
    return out


def test_three_shards_cover_each_series_once(env: dict[str, Path], sharded: Path) -> None:
    shard_keys = [[r["series_key"] for r in read_report(sharded / f"report.shard-{i}-of-3.csv")] for i in range(3)]
    flat = [k for keys in shard_keys for k in keys]
    assert len(flat) == len(set(flat)), "a series was reported by two shards"
    merged = read_report(sharded / "report.csv")
    assert sorted(r["series_key"] for r in merged) == sorted(flat)
    summary = json.loads((sharded / "report.json").read_text())["summary"]
    assert summary["complete"] and summary["n_series"] == len(merged) >= 8
    by_status = {s: [r for r in merged if r["status"] == s] for s in ("ok", "error")}
    # The truncated file, the series without orientation, and the truncated file's series, which
    # misses that slice: an error row by default (uneven=refuse), never interpolated data.
    assert len(by_status["error"]) == 3
    assert all(r["reason"].startswith("ingest error") for r in by_status["error"])
    assert any("truncated" in r["reason"] for r in by_status["error"])
    for row in by_status["ok"]:
        img = nib.load(str(sharded / row["series_key"] / "seg.nii.gz"))
        lab = np.asarray(img.dataobj)
        voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
        for value, name in ((1, "liver"), (2, "spleen"), (3, "kidney")):
            assert int(row[f"voxels_{name}"]) == int((lab == value).sum())
            assert float(row[f"volume_ml_{name}"]) == pytest.approx(int((lab == value).sum()) * voxel_ml, abs=1e-3)
        assert row["model_name"] == "tiny" and row["model_version"] == "1" and row["model_alias"] == "champion"
        assert (sharded / "done" / f"{row['series_key']}.json").is_file()
    # MLflow: one run per shard in experiment 'inference', report attached, no PHI anywhere.
    runs = mlflow.search_runs(experiment_names=["inference"], output_format="list")
    assert len(runs) == 3 and sum(int(r.data.metrics["n_ok"]) for r in runs) == len(by_status["ok"])
    for run in runs:
        assert run.data.params["model_version"] == "1"
        text = json.dumps({**run.data.params, **run.data.tags})
        assert CANARY not in text and CANARY_TOKEN not in text and str(env["export"]) not in text
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
        assert any(p.endswith(".csv") for p in arts)
    # merge_only rebuilds the same merged report from the markers.
    before = (sharded / "report.csv").read_text()
    (sharded / "report.csv").unlink()
    merged_again = run_inference(config(env, sharded, "merge_only=true", "tracking.enabled=false"))
    assert merged_again.result.merged_complete and (sharded / "report.csv").read_text() == before
    for path in sharded.rglob("*"):
        if path.is_file() and ".private" not in str(path) and "work" not in path.parts:
            data = path.read_bytes()
            assert CANARY.encode() not in data and CANARY_TOKEN.encode() not in data, path


def _source_positions(source) -> dict[tuple[str, int], np.ndarray]:
    return {(PSEUDO.uid(str(source.headers[i].SOPInstanceUID)), f): source.geometry(i, f).ipp
            for i, f in source.frames}


def test_seg_lines_up_with_prediction_on_source_grid(env: dict[str, Path], sharded: Path) -> None:
    private = sharded.with_name(sharded.name + ".private")
    manifest = json.loads((env["export"] / "manifest.json").read_text())
    case_of = {m["series_instance_uid"]: (m.get("flags") or ["normal"])[0] for m in manifest["series"]}
    checked = 0
    kinds = set()
    for row in read_report(sharded / "report.csv"):
        if row["status"] != "ok" or not (sharded / row["series_key"] / "seg.dcm").is_file():
            continue
        key = row["series_key"]
        img = nib.load(str(sharded / key / "seg.nii.gz"))
        labels = np.asarray(img.dataobj)
        source = load_source(private / "sources" / f"{key}.json")
        kinds.add(case_of.get(str(source.headers[0].SeriesInstanceUID), Path(source.paths[0]).parent.name))
        positions = _source_positions(source)
        frames = read_seg_frames(sharded / key / "seg.dcm")
        seg = pydicom.dcmread(sharded / key / "seg.dcm", stop_before_pixels=True)
        head = source.headers[0]
        identity, _ = subject_identity(str(head.PatientID), str(head.get("IssuerOfPatientID", "")),
                                       str(head.StudyInstanceUID))  # (issuer, PatientID), as imaging deid keys it
        assert seg.PatientID == PSEUDO.pseudo_id(identity, "subject", "SUBJ")
        assert seg.FrameOfReferenceUID == PSEUDO.uid(str(source.headers[0].FrameOfReferenceUID))
        numbers = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
        value_of = {n: next(v for v, name in LABELS.items() if name == label) for n, label in numbers.items()}
        for fr in frames:
            ref = (fr.referenced_sop_instance_uid, fr.referenced_frame or 1)
            np.testing.assert_allclose(fr.position, positions[ref], atol=1e-3)
            want = _expected(fr.position, fr.orientation, fr.spacing, *fr.mask.shape, labels, img.affine)
            assert np.array_equal(fr.mask, (want == value_of[fr.segment_number]).astype(np.uint8)), (key, ref)
        checked += 1
    assert checked >= 8
    assert {"oblique", "tilt:15", "compressed", "multiframe"} <= kinds, kinds
    assert {"position:FFS", "position:HFP", "position:FFP", "position:HFDL"} <= kinds, kinds


def _wait_for(path: Path, pattern: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not list(path.glob(pattern)):
        assert time.monotonic() < end, f"nothing matched {path}/{pattern}"
        time.sleep(0.2)


def test_resume_after_kill_no_duplicates(env: dict[str, Path], sharded: Path, tmp_path: Path) -> None:
    dataset = sharded / "work" / "dataset"
    out = tmp_path / "out"
    args = [sys.executable, "-m", "imaging", "infer", "model=models:/tiny@champion", f"input={dataset}",
            f"private_dir={sharded.with_name(sharded.name + '.private')}", f"output_dir={out}",
            f"paths.root_dir={env['root']}", "demo_key=true", "tracking.enabled=false"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(out / "done", "*.json")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    private = sharded.with_name(sharded.name + ".private")
    rerun = ("tracking.enabled=false", f"private_dir={private}")
    outcome = run_inference(config(env, out, *rerun, source=dataset))
    assert outcome.result.n_skipped_done >= len(done_before)
    for name, mtime in done_before.items():  # finished series were not redone
        assert (out / "done" / name).stat().st_mtime_ns == mtime
    rows = read_report(out / "report.csv")
    assert len(rows) == len({r["series_key"] for r in rows}) == len(read_report(sharded / "report.csv"))
    assert not [p for p in out.rglob(".*tmp*")], "a half-written file was left behind"
    # Remove one series' outputs and marker: only that one is predicted again.
    victim = next(r["series_key"] for r in rows if r["status"] == "ok")
    shutil.rmtree(out / victim)
    (out / "done" / f"{victim}.json").unlink()
    again = run_inference(config(env, out, *rerun, source=dataset))
    assert again.result.n_ok == 1 and (out / victim / "seg.nii.gz").is_file()
    assert len(read_report(out / "report.csv")) == len(rows)


def test_bad_series_recorded_batch_goes_on(env: dict[str, Path], sharded: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(sharded / "work" / "dataset", dataset)
    private = sharded.with_name(sharded.name + ".private")
    ok_rows = [r for r in read_report(sharded / "report.csv") if r["status"] == "ok"]
    broken = ok_rows[0]["series_key"]
    vol = dataset / "volumes" / f"{broken}.nii.gz"
    vol.write_bytes(vol.read_bytes()[:200])  # a truncated volume: unreadable
    out = tmp_path / "out"
    outcome = run_inference(config(env, out, f"private_dir={private}", "tracking.enabled=false",
                                   "fail_on_error=true", source=dataset))
    assert outcome.exit_code == 1
    rows = {r["series_key"]: r for r in read_report(out / "report.csv")}
    assert rows[broken]["status"] == "error" and broken in rows[broken]["reason"]
    assert not (out / "done" / f"{broken}.json").exists() and (out / "errors" / f"{broken}.json").exists()
    assert sum(r["status"] == "ok" for r in rows.values()) == len(ok_rows) - 1


def test_dcmqi_reads_pipeline_seg_on_source_geometry(env: dict[str, Path], sharded: Path, tmp_path: Path) -> None:
    """dcmqi (3D Slicer's SEG reader) puts the oblique series' SEG where seg.nii.gz has it."""
    sitk = pytest.importorskip("SimpleITK")
    tool = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    private = sharded.with_name(sharded.name + ".private")
    manifest = json.loads((env["export"] / "manifest.json").read_text())
    oblique_uid = next(m["series_instance_uid"] for m in manifest["series"] if "oblique" in (m.get("flags") or []))
    key = next(p.stem for p in (private / "sources").glob("*.json")
               if json.loads(p.read_text())["series_instance_uid"] == oblique_uid)
    seg_path = sharded / key / "seg.dcm"
    assert seg_path.is_file()
    subprocess.run([tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(tmp_path), "-t", "nifti"],
                   check=True, capture_output=True)
    source = load_source(private / "sources" / f"{key}.json")
    iop = source.geometry(0, 1).iop
    nifti = nib.load(str(sharded / key / "seg.nii.gz"))
    labels = np.asarray(nifti.dataobj)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    for item in seg.SegmentSequence:
        value = next(v for v, name in LABELS.items() if name == item.SegmentLabel)
        img = sitk.ReadImage(str(tmp_path / f"{item.SegmentNumber}.nii.gz"))
        direction = np.asarray(img.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-4)
        np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-4)
        arr = sitk.GetArrayFromImage(img)
        k, r, c = np.nonzero(arr)
        pts = np.array([img.TransformIndexToPhysicalPoint((int(ci), int(ri), int(ki)))
                        for ki, ri, ci in zip(k, r, c, strict=True)])
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(nifti.affine), pts * [-1, -1, 1])).astype(int)
        assert len(ijk) and np.all(labels[tuple(ijk.T)] == value)


@pytest.mark.slow
def test_concurrent_shards_merge_complete(env: dict[str, Path], sharded: Path, tmp_path: Path) -> None:
    """Three shards as parallel processes (a Slurm array): whoever finishes last writes the full report."""
    out = tmp_path / "out"
    private = sharded.with_name(sharded.name + ".private")
    procs = [
        subprocess.Popen([sys.executable, "-m", "imaging", "infer", "model=models:/tiny@champion",
                          f"input={sharded / 'work' / 'dataset'}", f"private_dir={private}", f"output_dir={out}",
                          f"paths.root_dir={env['root']}", "demo_key=true", "tracking.enabled=false", "overlay=false"],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "SLURM_ARRAY_TASK_ID": str(i),
                              "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"})
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    rows = read_report(out / "report.csv")
    expected = read_report(sharded / "report.csv")
    assert sorted(r["series_key"] for r in rows) == sorted(r["series_key"] for r in expected)
    assert json.loads((out / "report.json").read_text())["summary"]["complete"]
    assert sorted(r["shard"] for r in rows if r["status"] == "ok") == sorted(
        r["shard"] for r in expected if r["status"] == "ok")
