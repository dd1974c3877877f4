"""The three review notebooks executed (nbclient, the venv's kernel) on demo-like outputs.

The outputs are made here, small, by the real CLI in fresh processes, in the
``make demo`` layout under one root (``<root>/demo/{export,dataset,heldout,predictions}``,
``<root>/mlflow/mlflow.db``): synth -> ingest -> two tiny trainings (so runs can be
compared) -> infer on a held-out export. Each notebook gets its parameters
papermill-style (a cell after the ``parameters`` cell) and must run without an
error and show its key outputs. Notebook 01 finds the dataset through its
default (``$IMAGING_ROOT``), the others through injected paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

from imaging.review.notebook import inject_parameters, outputs_of, read
from imaging.tracking.summary import NOTE_TAG
from tests.fixtures.train_data import TINY

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
KERNEL = "imaging-venv-tests"


def imaging(*args: str, root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGING_ROOT": str(root)}
    env.pop("IMAGING_DEID_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "imaging", *args, f"paths.root_dir={root}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"imaging {args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nb-demo")
    d = root / "demo"
    imaging("synth", f"output_dir={d / 'export'}", "subjects=2", "seed=0", root=root)
    imaging("ingest", f"input_dir={d / 'export'}", f"output_dir={d / 'dataset'}", "demo_key=true", "workers=1",
            "progress=false", "fail_on_error=false", root=root)
    train = [*TINY, f"data.dataset_dir={d / 'dataset'}", "tracking.review_cases=2"]
    imaging("train", *train, "trainer.max_epochs=2", root=root)
    imaging("train", *train, "trainer.max_epochs=1", "trainer.lr=0.01", "tracking.run_name=lr1e-2", root=root)
    imaging("synth", f"output_dir={d / 'heldout'}", "subjects=1", "seed=1000", "cases=none", root=root)
    imaging("infer", "model=models:/demo_seg@candidate", f"input={d / 'heldout'}", f"output_dir={d / 'predictions'}",
            "demo_key=true", root=root)
    return root


@pytest.fixture(scope="module")
def kernel(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernelspec for this venv's python, found through JUPYTER_PATH (nothing written outside tmp)."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imaging (tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter))
        mp.setenv("IMAGING_ROOT", str(demo_root))  # the kernel inherits it: defaults point at this demo
        mp.setenv("OMP_NUM_THREADS", "1")
        yield KERNEL


def execute(name: str, params: dict[str, Any], kernel: str, out_dir: Path) -> nbformat.NotebookNode:
    nb = inject_parameters(read(REPO / "notebooks" / name), params)
    try:
        NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(REPO / "notebooks")}}
                       ).execute()
    finally:
        nbformat.write(nb, str(out_dir / name))  # executed copy, for a look when it fails
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return nb


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def test_01_explore_dataset(kernel: str, demo_root: Path, tmp_path: Path) -> None:
    nb = execute("01_explore_dataset.ipynb", {"n_volumes": 2}, kernel, tmp_path)
    assert len(outputs_of(nb, "image/png")) >= 4  # status bars, 2 orthoviews, histograms
    tables = "".join(outputs_of(nb, "text/html"))
    assert "modality" in tables and "skipped" in tables and "truncated" in tables
    assert "catalog rows in dataset/" in stdout(nb)


def test_02_review_training_sets_an_alias_only_when_asked(kernel: str, demo_root: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{demo_root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    before = dict(client.get_registered_model("demo_seg").aliases)
    nb = execute("02_review_training.ipynb", {"tracking_uri": uri}, kernel, tmp_path)
    assert dict(client.get_registered_model("demo_seg").aliases) == before, "set_alias=None moved an alias"
    assert "no alias moved" in stdout(nb)
    assert len(outputs_of(nb, "image/png")) == 3  # learning curves, Dice per label, review images
    tables = "".join(outputs_of(nb, "text/html"))
    assert "trainer.lr" in tables and "trainer.max_epochs" in tables  # the config diff of the two runs
    assert any("### Validation Dice per label" in m for m in outputs_of(nb, "text/markdown"))

    nb = execute("02_review_training.ipynb", {"tracking_uri": uri, "set_alias": "reviewed",
                                              "write_descriptions": True}, kernel, tmp_path)
    aliases = dict(client.get_registered_model("demo_seg").aliases)
    assert aliases["candidate"] == before["candidate"] and "reviewed" in aliases
    best = client.get_model_version("demo_seg", str(aliases["reviewed"]))
    runs = client.search_runs([client.get_experiment_by_name("demo_seg").experiment_id])
    assert best.run_id == max(runs, key=lambda r: r.data.metrics["best_dice_mean"]).info.run_id
    assert f"@reviewed -> demo_seg v{aliases['reviewed']}" in stdout(nb)
    # Every run and version of the real training output now carries its description.
    for run in runs:
        note = client.get_run(run.info.run_id).data.tags[NOTE_TAG]
        assert run.data.tags["dataset.catalog_sha256"] in note and "| **mean** |" in note
        assert "/artifactPath/review/" in note
    for version in client.search_model_versions("name='demo_seg'"):
        assert f"`{version.run_id}`" in version.description and "### Lineage" in version.description


def test_03_review_predictions(kernel: str, demo_root: Path, tmp_path: Path) -> None:
    predictions = demo_root / "demo" / "predictions"
    nb = execute("03_review_predictions.ipynb", {"predictions_dir": str(predictions)}, kernel, tmp_path)
    text = stdout(nb)
    assert "all agree with their source" in text and "0 SEG(s) checked" not in text
    assert len(outputs_of(nb, "image/png")) >= 4  # status/timing, volumes, worst and best views
    tables = "".join(outputs_of(nb, "text/html"))
    assert "volume_ml_liver" in tables and "SEG (mL)" in tables
    assert "pass" in tables and "FAIL" not in tables
