"""`imaging.api` runs what the command line runs: checked against the command line itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imaging.apps import api
from imaging.dicom.catalog import read_catalog
from imaging.synth import generate

pytestmark = pytest.mark.integration


def test_api_ingest_gives_the_cli_catalog(tmp_path: Path) -> None:
    generate(tmp_path / "export", subjects=1, seed=3, cases="none", dicomdir=False)
    summary = api.ingest(tmp_path / "export", tmp_path / "ds_api", {"workers": 1, "progress": False}, demo_key=True)
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGING_DEID_SECRET", "HYDRA_FULL_ERROR")}
    proc = subprocess.run([sys.executable, "-m", "imaging", "ingest", f"input_dir={tmp_path / 'export'}",
                           f"output_dir={tmp_path / 'ds_cli'}", "demo_key=true", "workers=1", "progress=false"],
                          cwd=tmp_path, env={**env, "IMAGING_ROOT": str(tmp_path)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = {(r.series_key, r.status, r.shape) for r in read_catalog(tmp_path / "ds_api" / "catalog.csv")}
    theirs = {(r.series_key, r.status, r.shape) for r in read_catalog(tmp_path / "ds_cli" / "catalog.csv")}
    assert ours == theirs and len(ours) == len(summary.rows) and summary.counts.get("ok", 0) >= 1


def test_api_compose_is_the_cli_config(tmp_path: Path) -> None:
    overrides = {"trainer.max_epochs": 3, "model": "segresnet", "paths.root_dir": str(tmp_path)}
    cfg = api.compose("train", {"experiment": "demo_seg", **overrides})
    proc = subprocess.run([sys.executable, "-m", "imaging", "train", "experiment=demo_seg",
                           *(f"{k}={v}" for k, v in overrides.items()), "--cfg", "job", "--resolve"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import yaml

    printed = yaml.safe_load(proc.stdout)
    assert cfg.trainer.max_epochs == printed["trainer"]["max_epochs"] == 3
    assert cfg.model.name == printed["model"]["name"]
    assert cfg.data.patch_size == printed["data"]["patch_size"]
    assert str(cfg.paths.output_dir) == printed["paths"]["output_dir"]


def test_api_values_with_commas_and_quotes_survive(tmp_path: Path) -> None:
    folder = tmp_path / "O'Brien, Seamus (1957)"
    cfg = api.compose("ingest", {"input_dir": folder, "output_dir": tmp_path / "ds", "demo_key": True})
    assert cfg.input_dir == str(folder)
