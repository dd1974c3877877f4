"""Synthetic export: benchmark writers and the `imaging synth` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

from imaging.synth import write_ct_series, write_many_small_series


def test_write_ct_series(tmp_path: Path) -> None:
    manifest = write_ct_series(tmp_path / "ct", shape=(80, 72, 12), step=1.5)
    (series,) = manifest["series"]
    assert len(series["files"]) == 12 and series["expected"]["shape"] == [72, 80, 12]
    headers = [pydicom.dcmread(tmp_path / "ct" / f) for f in series["files"]]
    assert {(ds.Rows, ds.Columns) for ds in headers} == {(80, 72)}
    z = [float(ds.ImagePositionPatient[2]) for ds in headers]
    assert np.allclose(np.diff(z), 1.5)
    assert (tmp_path / "ct" / "manifest.json").is_file()


def test_write_many_small_series(tmp_path: Path) -> None:
    manifest = write_many_small_series(tmp_path / "mr", n_files=45, files_per_series=10, matrix=32,
                                       series_per_subject=2)
    assert manifest["n_files"] == 50 and len(manifest["series"]) == 5
    assert len({s["patient_id"] for s in manifest["series"]}) == 3
    assert len({s["series_instance_uid"] for s in manifest["series"]}) == 5
    for series in manifest["series"]:
        ds = pydicom.dcmread(tmp_path / "mr" / series["files"][0])
        assert ds.Modality == "MR" and ds.pixel_array.shape == (32, 32)


def test_cli_writes_an_export(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGING_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "imaging.cli", "synth", f"output_dir={out}", "subjects=0", "seed=7",
         "cases=[sr,too_few_slices]", "dicomdir=false"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["cases"] == ["sr", "too_few_slices"]
    assert manifest["dicomdir"] is None and not (out / "DICOMDIR").exists()
    assert "files, manifest" in proc.stdout
    assert "ZZPHI" not in proc.stdout + proc.stderr  # no PHI in what the command prints or logs
