"""A real CT under patient-named folders and files no pattern anticipates, through ingest and infer.

GE's 5-slice CT from pydicom's test files is copied (new UIDs, a patient each) under
folder and file names with apostrophes, quotes, commas, parentheses, umlauts,
Chinese and Cyrillic letters, spaces, a newline, percent-encoding and a 200-character
component. One copy has a slice 0.004 off orthonormal (refused by ingest: the SEG
writer's tolerance), one file is truncated (unreadable). After ingest, one series loses
a source file and another gets a slice the SEG/RTSTRUCT writers refuse: infer (the CLI,
SEG and RTSTRUCT, a study report, a tiny registered model in a real MLflow store) fails
both in its writers. No piece of any name may appear in the dataset, the predictions (gzip
decoded), the console, or the MLflow runs (params, tags, description, artifacts);
the private errors.jsonl (0600) keeps the raw text with the paths.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pydicom
import pytest
import torch
from mlflow import MlflowClient

from imaging.keys import Pseudonymizer
from imaging.models.registry import build_network
from imaging.tracking.registry import register_model
from imaging.tracking.runs import embedded_uri

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
VENDOR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
PSEUDO = Pseudonymizer.from_config(demo_key=True)
LONG = "KOWALCZYK-WIŚNIEWSKA^ANNA-MARIA_" * 5 + "19550505"  # 171 characters, 176 bytes
# role -> (folder of the series, file name pattern, patient name)
SERIES = {
    "ok": ("O'BRIEN^SEAMUS_19570312/CT \"THX\" (1), ax", "IM'{n}", "O'BRIEN^SEAMUS"),
    "bad_orientation": ("Müller-O'Neill, Jürgen (12.03.1957)/Série 2 – Thorax", "Bild '{n}'", "Müller^Jürgen"),
    "lost_source": ("D'ANGELO, Rosa (1961-07-02)/séries\nzwei", "IM,{n}", "D'ANGELO^Rosa"),
    "bad_seg_geometry": (f"{LONG}/Серия %E2%80%93 Иванов", "IM%20{n}", "WIŚNIEWSKA^Anna"),
}
UNREADABLE = "李^小龙 19400127/%27Lee%27 (Xiaolong)/IM,1"
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [1.0, 1.0, 2.5],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [16, 16, 8]}
LABELS = {0: "background", 1: "liver"}
OFF = [1.0, 0.004, 0.0, 0.0, 1.0, 0.0]  # 0.004 off orthonormal: within the old 1e-2, outside 1e-3


def _needles() -> set[str]:
    """Every folder/file name, its pieces cut at quotes and newlines, and its words (4+ letters, 6+ digits)."""
    out: set[str] = set()
    rels = [f"{folder}/{pattern}" for folder, pattern, _ in SERIES.values()] + [UNREADABLE]
    names = [name for _, _, name in SERIES.values()]
    for text in rels + names:
        for part in text.split("/"):
            out.add(part.replace("{n}", ""))
            out.update(p for p in re.split(r"['\"\n]", part) if len(p) >= 4)
            for word in re.split(r"[\W_]+", part):
                if (word.isdigit() and len(word) >= 6) or (not word.isdigit() and len(word) >= 4 and word != "n"):
                    out.add(word)
    return {n for n in out if len(n) >= 4 and n not in ("{n}",)}


def _copy_series(root: Path, role: str, index: int) -> list[Path]:
    folder, pattern, patient = SERIES[role]
    target = root / folder
    target.mkdir(parents=True)
    study, series, frame = (pydicom.uid.generate_uid(entropy_srcs=[role, what]) for what in ("st", "se", "for"))
    paths = []
    for n, src in enumerate(sorted(VENDOR.iterdir()), start=1):
        ds = pydicom.dcmread(src)
        ds.PatientName, ds.PatientID = patient, f"PID-{index}-{role}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[role, str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 names
        if role == "bad_orientation" and n == 3:
            ds.ImageOrientationPatient = OFF
        path = target / pattern.format(n=f"{n:04d}")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _cli(env: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "IMAGING_ROOT": str(env["root"]), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "imaging", *args, "demo_key=true"], cwd=env["root"], env=run_env,
                          capture_output=True, text=True, timeout=900)


def _constant_liver(net_cfg: dict[str, Any]) -> torch.nn.Module:
    """Every voxel liver: zero weights, the last bias favours label 1 (a known, non-empty mask)."""
    net = build_network(net_cfg)
    with torch.no_grad():
        for module in net.modules():
            for name, param in module.named_parameters(recurse=False):
                param.zero_()
                if name == "bias" and param.shape == (2,):
                    param.copy_(torch.tensor([0.0, 1.0]))
    return net


def plant_unreadable_and_register(root: Path, export: Path, files: dict[str, list[Path]]) -> str:
    """A truncated copy of a slice under a hostile name (ingest refuses it) and ``tiny_hostile@champion``
    registered in an embedded store under ``root``, made MLflow's tracking store; its URI."""
    bad = export / UNREADABLE
    bad.parent.mkdir(parents=True)
    data = files["ok"][0].read_bytes()
    bad.write_bytes(data[: len(data) - 100])
    (root / "mlflow").mkdir()
    uri = embedded_uri(root / "mlflow" / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("train", artifact_location=(root / "mlflow" / "artifacts").as_uri())
    net_cfg = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
               "strides": [2], "num_res_units": 0}
    with mlflow.start_run(experiment_id=exp):
        register_model(_constant_liver(net_cfg), network_config=net_cfg, preprocessing=PRE, labels=LABELS,
                       task="segmentation", name="tiny_hostile", alias="champion")
    return uri


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    export = root / "export"
    files = {role: _copy_series(export, role, i) for i, role in enumerate(SERIES)}
    previous = mlflow.get_tracking_uri()
    uri = plant_unreadable_and_register(root, export, files)
    env: dict[str, Any] = {"root": root, "export": export, "files": files, "uri": uri, "console": []}
    dataset = root / "dataset"
    proc = _cli(env, "ingest", f"input_dir={export}", f"output_dir={dataset}", "workers=1", "progress=false")
    env["console"].append(proc.stdout + proc.stderr)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # done, some inputs failed
    # After ingest: a source file goes, another is rewritten with a slice the writers refuse.
    files["lost_source"][2].unlink()
    ds = pydicom.dcmread(files["bad_seg_geometry"][1])
    ds.ImageOrientationPatient = OFF
    ds.save_as(files["bad_seg_geometry"][1], enforce_file_format=True)
    runs: tuple[tuple[str, list[str]], ...] = (("pred_rtstruct", ["seg.enabled=false", "output.rtstruct=true", "inference/select@select=any_series",
                               "output.preview=true"]), ("pred_seg", []))
    for out, extra in runs:
        proc = _cli(env, "infer", "model=models:/tiny_hostile@champion", f"input={dataset}",
                    f"output_dir={root / out}", "inference.sw_batch_size=1", *extra)
        env["console"].append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield {**env, "dataset": dataset}
    mlflow.set_tracking_uri(previous)


def _forms(needle: str) -> set[bytes]:
    """The needle as bytes the way files hold text: UTF-8, JSON \\u escapes, Python escapes, Latin-1."""
    forms = {needle.encode(), json.dumps(needle)[1:-1].encode(), needle.encode("unicode_escape")}
    with contextlib.suppress(UnicodeEncodeError):
        forms.add(needle.encode("latin-1"))
    return forms


def _hits(blob: bytes, needles: set[str]) -> list[str]:
    return sorted(n for n in needles if any(f in blob for f in _forms(n)))


def _file_hits(folder: Path, needles: set[str]) -> dict[str, list[str]]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        if path.suffix == ".gz":
            blob = gzip.decompress(blob)
        found = _hits(blob + str(path.relative_to(folder)).encode(), needles)
        if found:
            out[str(path.relative_to(folder))] = found
    return out


def _assert_run_clean(client: MlflowClient, run: Any, needles: set[str], into: Path) -> None:
    """No needle in an MLflow run's params, tags, metric names or artifacts (downloaded under ``into``)."""
    text = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)], ensure_ascii=False)
    assert _hits(text.encode(), needles) == [], run.info.run_id
    local = Path(client.download_artifacts(run.info.run_id, "", str(into / run.info.run_id)))
    assert _file_hits(local, needles) == {}, run.info.run_id


def _key(rel: str) -> str:
    return "file-" + PSEUDO.key(rel, "file")


def test_ingest_names_files_by_key_and_refuses_what_the_seg_writer_would(env: dict[str, Any]) -> None:
    rows = list(csv.DictReader((env["dataset"] / "catalog.csv").open(encoding="utf-8")))
    by_reason = {r["reason"]: r for r in rows if r["status"] == "error"}
    folder, pattern, _ = SERIES["bad_orientation"]
    refused = f"file {_key(folder + '/' + pattern.format(n='0003'))}: invalid (0020,0037) ImageOrientationPatient"
    assert any(reason.startswith(refused) for reason in by_reason), list(by_reason)
    assert any(reason.startswith(f"file {_key(UNREADABLE)}: ") for reason in by_reason), list(by_reason)
    assert sum(r["status"] == "ok" for r in rows) == 3
    names = {json.loads(line)["key"]: json.loads(line) for line in
             (env["root"] / "dataset.private" / "names.jsonl").read_text(encoding="utf-8").splitlines()}
    assert names[_key(UNREADABLE)]["path"] == UNREADABLE  # the private side leads back to the file


def test_writer_failures_are_reported_by_type_and_their_text_kept_private(env: dict[str, Any]) -> None:
    ok: set[tuple[str, str]] = set()
    failed: dict[tuple[str, str], str] = {}
    for out in ("pred_rtstruct", "pred_seg"):
        for row in csv.DictReader((env["root"] / out / "report.csv").open(encoding="utf-8")):
            if row["status"] == "ok":
                ok.add((out, row["series_key"]))
            else:
                failed[(out, row["series_key"])] = row["reason"]
    seg_failures = [r for (out, _), r in failed.items() if out == "pred_seg" and r.startswith("seg")]
    assert len(seg_failures) == 2, failed  # the lost source and the refused slice
    assert any("(0020,0037) ImageOrientationPatient" in r for r in seg_failures), seg_failures
    studies = list(csv.DictReader((env["root"] / "pred_rtstruct" / "studies.csv").open(encoding="utf-8")))
    assert len(studies) == 4 and any(r["n_rejected"] != "0" for r in studies), studies  # the refused series
    rt = [json.loads(p.read_text()) for p in (env["root"] / "pred_rtstruct").glob("*/rtstruct.json")]
    assert sorted(r["written"] for r in rt) == [False, False, True], rt
    assert all(r["reason"].startswith("rtstruct: ") for r in rt if not r["written"]), rt
    assert (env["root"] / "pred_seg" / next(k for o, k in ok if o == "pred_seg") / "seg.dcm").is_file()
    errors = env["root"] / "dataset.private" / "errors.jsonl"
    assert stat.S_IMODE(errors.stat().st_mode) == 0o600
    records = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    lost = str(env["files"]["lost_source"][2])  # the raw text, path and all, is on the private side
    spelt = (lost, repr(lost)[1:-1])  # OSError writes the name as repr() does: the newline escaped
    assert any(f in rec["message"] for rec in records for f in spelt), [r["message"] for r in records]
    assert {rec["stage"] for rec in records} >= {"seg", "seg source", "rtstruct"}


def test_no_piece_of_a_name_in_outputs_console_or_mlflow(env: dict[str, Any], tmp_path: Path) -> None:
    needles = _needles()
    assert _file_hits(env["export"], needles)  # live: the export is full of them
    for folder in (env["dataset"], env["root"] / "pred_rtstruct", env["root"] / "pred_seg"):
        assert _file_hits(folder, needles) == {}, folder
    for text in env["console"]:
        assert _hits(text.encode(), needles) == [], text[-2000:]
    client = MlflowClient(env["uri"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sum(r.data.tags.get("imaging.stage") == "infer" for r in runs) == 2
    for run in runs:
        _assert_run_clean(client, run, needles, tmp_path)
