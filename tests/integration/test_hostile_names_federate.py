"""`imaging federate` with a site whose export and dataset live under a patient-named folder.

Site A is a synthetic hospital (PHI canaries) exported and ingested under a folder named the way
real exports are (apostrophe, quotes, comma, parentheses, umlauts, a birth date), with a truncated
file under another such name (an error row at the site's ingest); site B is plain.
The CLI runs a local federation (SuperLink + one SuperNode per site) for one round. No piece of
the folder's name may reach the coordinator's console, its run folder (the coordinator's own files
and logs; the SuperNodes' logs and work folders are the sites' and would live at the sites), or its MLflow run
(params, tags, metrics, artifacts); `imaging audit --mlflow URI --export EXPORT` agrees.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.apps.api import _hydra_value
from imaging.keys import DEMO_SECRET, Pseudonymizer
from imaging.pipelines.ingest import ingest
from imaging.synth import generate
from tests.integration.test_hostile_names import REPO, _assert_run_clean, _file_hits, _hits

pytestmark = [pytest.mark.integration, pytest.mark.federated, pytest.mark.slow]
HOSTILE = "O'BRIEN^SEAMUS_19570312 (Müller, Jürgen 12.03.1957)/\"THX\" D'ANGELO, Rosa"
BROKEN = "KOWALSKI, Jan (1961-07-02)/Серия 'Иванов'/IM,1"  # inside site A's export


def _oracle(rel: str) -> str:
    """The file key from its definition (HMAC-SHA256 of b'file' NUL path, 16 hex digits), not from the code."""
    return hmac.new(DEMO_SECRET, b"file\x00" + rel.encode(), hashlib.sha256).hexdigest()[:16]


def _needles() -> set[str]:
    """The folder names, their pieces at quotes, and their words of 4+ letters or 6+ digits."""
    import re

    out: set[str] = set()
    for part in [*HOSTILE.split("/"), *BROKEN.split("/")]:
        out.add(part)
        out.update(p for p in re.split(r"['\"]", part) if len(p) >= 4)
        out.update(w for w in re.split(r"[\W_]+", part) if (w.isdigit() and len(w) >= 6) or
                   (not w.isdigit() and len(w) >= 4))
    return out


def test_a_site_under_a_patient_named_folder_leaves_no_trace_at_the_coordinator(tmp_path: Path) -> None:
    root = tmp_path
    datasets, exports = {}, {}
    for i, (site, folder) in enumerate((("A", HOSTILE), ("B", "plain"))):
        base = root / "hospitals" / folder
        exports[site], datasets[site] = base / "export", base / "dataset"
        generate(exports[site], subjects=3, seed=500 + i, cases="none", scanner=f"site{i}", dicomdir=False)
        if site == "A":  # a slice that fails at the site's ingest, under the name: an error row, by key
            data = next(p for p in sorted(exports[site].rglob("IM*")) if p.is_file()).read_bytes()
            (exports[site] / BROKEN).parent.mkdir(parents=True)
            (exports[site] / BROKEN).write_bytes(data[: len(data) // 2])
        ingest(exports[site], datasets[site], Pseudonymizer.from_config(demo_key=True),
               private_dir=base / "private", workers=1, progress=False)
    reasons = [r["reason"] for r in csv.DictReader((datasets["A"] / "catalog.csv").open(encoding="utf-8"))]
    assert any(r.startswith(f"file file-{_oracle(BROKEN)}: ") for r in reasons), reasons
    overrides = {
        "experiment": "demo_federated", "federation.sites": ["A", "B"], "federation.synthetic": "null",
        "+federation.datasets.A": datasets["A"], "+federation.datasets.B": datasets["B"],
        "paths.root_dir": root, "federation.rounds": 1, "federation.local_epochs": 1,
        "federation.round_timeout_s": 240, "federation.connect_timeout_s": 120, "data.patch_size": [16, 16, 8],
        "data.split.folds": 3, "data.samples_per_volume": 1, "model.channels": [4, 8, 16], "model.strides": [2, 2],
        "trainer.progress": False, "tracking.run_name": "fed-hostile", "tracking.review_cases": 0,
    }
    args = [f"{k}={v if v == 'null' else _hydra_value(v)}" for k, v in overrides.items()]
    env = {**os.environ, "IMAGING_ROOT": str(root), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "imaging", "federate", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    needles = _needles()
    assert _hits(str(datasets["A"]).encode(), needles)  # live: the site's path is full of them
    assert _hits(console.encode(), needles) == [], console[-4000:]
    runs_dir = root / "runs"
    # A local federation keeps each site's SuperNode log and work folder (its node config names its
    # dataset) beside the coordinator's files; at a hospital they are the site's. The rest is the coordinator's.
    hits = _file_hits(runs_dir, needles)
    site_side = {k for k in hits if "/flower/supernode-" in k or "/sites/A/" in k}
    assert {k: v for k, v in hits.items() if k not in site_side} == {}
    assert any(k.endswith("sites/A/node-config.toml") for k in site_side)  # live: the site's path is there
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    for run in runs:
        _assert_run_clean(client, run, needles, root / "artifacts")
    audit = subprocess.run([sys.executable, "-m", "imaging", "audit", "--mlflow", uri, "--export", str(exports["A"])],
                           cwd=root, env={**env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=600)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
