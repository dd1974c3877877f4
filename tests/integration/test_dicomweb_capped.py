"""Pulls from a real Orthanc that caps its QIDO answers (``LimitFindInstances`` / ``LimitFindResults``).

Issue 29 (12): a capped archive answered 51 instances of a 140-slice series and the pull
moved the study in as complete. Oracle: the files STOWed in (their UIDs, counted per series
here, not by the code under test) and what lands in the export, read back with pydicom.
Issue 29 (13): ``study=UID`` as one value, through the shipped configs (infer and the
``imaging pull`` command line).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hydra import compose, initialize_config_dir
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging.dicomweb.client import DicomwebSettings
from imaging.dicomweb.pull import Puller
from imaging.dicomweb.qido import as_uid_list
from imaging.keys import Pseudonymizer
from imaging.pipelines.infer.remote import (
    TransferRow,
    pull_for_inference,
    read_transfers,
    write_transfers,
)
from imaging.resources import CONF_DIR
from tests.fixtures.orthanc import Orthanc, run_orthanc

pytestmark = [pytest.mark.integration, pytest.mark.orthanc]
REPO = Path(__file__).resolve().parents[2]
CAP = 50  # Orthanc answers CAP + 1 (it looks one further to know the answer is capped)


def _study(folder: Path, n_per_series: list[int]) -> tuple[str, dict[str, set[str]]]:
    """A CT study of ``len(n_per_series)`` series (pydicom's vendor CT slice, restacked); files in ``folder``."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study = generate_uid()
    sops: dict[str, set[str]] = {}
    for s, n in enumerate(n_per_series):
        series = generate_uid()
        sops[series] = set()
        for i in range(n):
            ds = src.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, s + 1
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0.0, 0.0, float(i)]
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm")
            sops[series].add(ds.SOPInstanceUID)
    return study, sops


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("orthanc-capped")
    files = root / "files"
    files.mkdir()
    two_long, long_sops = _study(files, [140, 140])  # the study: 2 x 140 slices
    many, many_sops = _study(files, [3, 3, 3])  # more series than LimitFindResults lets QIDO list
    with run_orthanc(root, extra={"LimitFindInstances": CAP, "LimitFindResults": 1}) as server:
        server.stow(sorted(files.glob("*.dcm")))
        yield {"server": server, "root": root, "files": files, "long": (two_long, long_sops),
               "many": (many, many_sops)}


def _pulled(export: Path, study: str) -> dict[str, set[str]]:
    """Series UID -> SOP UIDs of the files in the export, read from the files themselves."""
    out: dict[str, set[str]] = {}
    for p in (export / study).rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return out


def test_the_archive_really_caps_its_answers(capped: dict) -> None:
    """The premise: QIDO lists CAP + 1 of a 140-instance series and 2 of 3 series."""
    client = DicomwebSettings(capped["server"].dicomweb).client()
    study, sops = capped["long"]
    series = next(iter(sops))
    assert len(client.search_for_instances(study, series)) == CAP + 1
    assert len(client.search_for_series(capped["many"][0])) == 2


def test_capped_series_arrive_whole_and_transfers_say_ok(capped: dict, tmp_path: Path) -> None:
    server: Orthanc = capped["server"]
    study, sops = capped["long"]
    many, many_sops = capped["many"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # study=UID: one value, as anyone types it (issue 29, 13), through the shipped infer config.
        cfg = compose("infer", overrides=["model_uri=models:/m@champion", f"input={server.dicomweb}",
                                          f"output_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}",
                                          f"study={study}", "demo_key=true"])
    assert as_uid_list(cfg.study) == [study]
    pseudo = Pseudonymizer.from_config(demo_key=True)
    export, rows = pull_for_inference(cfg, tmp_path / "private", pseudo, "CT", progress=False)
    assert [(r.key, r.status, r.n_instances, r.n_fetched) for r in rows] == [
        (pseudo.key(study, "study"), "ok", 280, 280)]
    assert _pulled(export, study) == sops  # every slice of both series, nothing else
    write_transfers(tmp_path / "out", rows, "0/1")
    written = read_transfers(tmp_path / "out" / "transfers.shard-0-of-1.csv")
    assert [(r["status"], r["n_instances"], r["n_fetched"]) for r in written] == [("ok", "280", "280")]
    assert study not in (tmp_path / "out" / "transfers.shard-0-of-1.csv").read_text()
    # A resumed pull fetches nothing again: the whole series is on disk.
    again = Puller(DicomwebSettings(server.dicomweb).client(), export, progress=False).pull([study])
    assert again.totals()["fetched"] == 0 and again.totals()["already_present"] == 280
    # More series than the archive lists: the study's metadata names them all.
    summary = Puller(DicomwebSettings(server.dicomweb).client(), export, progress=False).pull([many])
    assert summary.studies[0].status == "ok" and summary.studies[0].n_series == 3
    assert _pulled(export, many) == many_sops


def test_missing_instances_make_the_study_not_ok(capped: dict, tmp_path: Path) -> None:
    """An instance the archive counts but cannot serve (its file lost): the study stays out, not ok."""
    server: Orthanc = capped["server"]
    study, sops = capped["long"]
    series = sorted(sops)[0]
    lost = sorted(sops[series])[100]  # beyond the capped listing: only the series retrieve would bring it
    stored = server.storage_file(lost)
    kept = stored.read_bytes()
    stored.unlink()
    try:
        export = tmp_path / "export"
        summary = Puller(DicomwebSettings(server.dicomweb).client(), export, study_key=lambda _: "study-k",
                         progress=False).pull([study])
    finally:
        stored.write_bytes(kept)
    row = summary.studies[0]
    # Orthanc cuts the series stream at the lost file; the rest comes one by one, the lost one fails.
    assert (row.status, row.n_instances, row.n_fetched, row.n_failed) == ("error", 280, 279, 1), row
    assert row.path is None and not (export / study).exists()
    assert "study-k" in row.reason and "1 of 280 instances failed" in row.reason
    assert study not in row.reason and series not in row.reason and lost not in row.reason
    out = tmp_path / "out"
    write_transfers(out, [TransferRow(row.key, "pull", row.status, row.reason, row.n_instances, row.n_fetched)],
                    "0/1")
    assert read_transfers(out / "transfers.shard-0-of-1.csv")[0]["status"] != "ok"
    # The other 279 instances wait in staging; with the file back, a re-run completes the study.
    staged = {p.stem for p in export.with_name("export.partial").rglob("*.dcm")}
    assert len(staged) == 279 and lost not in staged
    again = Puller(DicomwebSettings(server.dicomweb).client(), export, progress=False).pull([study])
    assert again.studies[0].status == "ok" and _pulled(export, study) == sops


def test_pull_cli_takes_one_study_uid(capped: dict, tmp_path: Path) -> None:
    """``imaging pull study=UID`` (not ``study=[UID]``): that one study, not one per character."""
    server: Orthanc = capped["server"]
    many, many_sops = capped["many"]
    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "imaging", "pull", f"url={server.dicomweb}", f"output_dir={out}",
                           f"study={many}", f"paths.root_dir={tmp_path}", "progress=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _pulled(out, many) == many_sops
    assert Counter(p.parent.parent.name for p in out.rglob("*.dcm")) == {many: 9}


def test_every_capped_series_gets_a_seg(capped: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's done-when: `infer input=URL` on the capped archive: both 140-slice series whole, a SEG each,
    each SEG referencing the 140 instances STOWed in (not the 51 QIDO lists), stored back."""
    import mlflow
    import torch
    from dicomweb_client.api import DICOMwebClient

    from imaging.models.registry import build_network
    from imaging.pipelines.infer.run import run_inference
    from imaging.tracking.registry import register_model

    server: Orthanc = capped["server"]
    study, sops = capped["long"]
    previous, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        exp = mlflow.create_experiment("train", artifact_location=(tmp_path / "artifacts").as_uri())
        torch.manual_seed(0)
        net = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
               "strides": [2], "num_res_units": 0}
        pre = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
               "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0,
                             "clip": True}, "roi_size": [32, 32, 16]}
        with mlflow.start_run(experiment_id=exp):
            register_model(build_network(net), network_config=net, preprocessing=pre,
                           labels={0: "background", 1: "liver"}, task="segmentation", name="capped", alias="champion")
        out = tmp_path / "out"
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("infer", overrides=[
                "model_uri=models:/capped@champion", f"input={server.dicomweb}", f"output_dir={out}",
                f"paths.root_dir={tmp_path}", "demo_key=true", "overlay=false", "tracking.enabled=false",
                f"tracking.uri={store}", f"study={study}", "seg.identity=source", "seg.push=true"])
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4711")  # as an array task: the alias is pinned for the array
        outcome = run_inference(cfg)
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous_registry)
    assert outcome.exit_code == 0 and outcome.result.n_ok == 2, outcome.result
    pulls = [t for t in outcome.transfers if t.stage == "pull"]
    assert [(t.status, t.n_instances) for t in pulls] == [("ok", 280)]
    pushed = [t for t in outcome.transfers if t.stage == "push"]
    assert len(pushed) == 2 and all(t.status == "ok" for t in pushed), pushed
    referenced = {}
    for path in out.glob("*/seg.dcm"):
        seg = pydicom.dcmread(path)
        ref = seg.ReferencedSeriesSequence[0]
        referenced[str(ref.SeriesInstanceUID)] = {str(i.ReferencedSOPInstanceUID)
                                                  for i in ref.ReferencedInstanceSequence}
    assert referenced == sops
    stored = DICOMwebClient(server.dicomweb).search_for_series(study, search_filters={"Modality": "SEG"})
    assert len(stored) == 2
    pin = json.loads((out / "work" / "model-pin.4711.json").read_text())
    assert pin == {"from": "models:/capped@champion", "uri": "models:/capped/1"}
    with (out / "report.csv").open(newline="") as fh:
        assert [r["model_version"] for r in csv.DictReader(fh)] == ["1", "1"]  # every row: the version it ran
