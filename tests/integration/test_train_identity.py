"""Issue 15's "done when", through the real `imaging train` command.

Two `imaging train experiment=demo_seg trainer.max_epochs=2` runs with different
`trainer.lr` give two MLflow runs, each with its own lr param and its own model
version; repeating one of them unchanged registers nothing new. The store comes
from $MLFLOW_TRACKING_URI (which `imaging train` must honour like `imaging model`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.fixtures.train_data import make_train_dataset, tiny_train_overrides

pytestmark = pytest.mark.integration


def _train(root: Path, dataset: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "imaging.cli", "train",
            *tiny_train_overrides(root, dataset, "trainer.max_epochs=2", *extra)]
    proc = subprocess.run(args, env=env, cwd=root, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_learning_rates_two_runs_two_versions_and_a_rerun_registers_nothing(tmp_path: Path) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    store = f"sqlite:///{tmp_path / 'elsewhere' / 'store.db'}"
    (tmp_path / "elsewhere").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(Path.cwd())}
    _train(tmp_path, dataset, env, "trainer.lr=0.001")
    _train(tmp_path, dataset, env, "trainer.lr=0.003")

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    exp = client.get_experiment_by_name("demo_seg")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["trainer.lr"] for r in runs) == ["0.001", "0.003"]
    assert len({r.data.tags["config_hash"] for r in runs}) == 2
    versions = client.search_model_versions("name='demo_seg'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    lr_of_run = {r.info.run_id: r.data.params["trainer.lr"] for r in runs}
    for v in versions:  # lineage on every version, and the config hash of its own run
        tags = v.tags
        run = client.get_run(v.run_id)
        assert tags["run_id"] == v.run_id and tags["config_hash"] == run.data.tags["config_hash"]
        assert len(tags["catalog_sha256"]) == 64 and tags["git_commit"] and tags["job_id"] == "local"
        assert tags["selection.monitor"] == "dice_mean" and int(tags["selection.best_epoch"]) in (1, 2)
        assert lr_of_run[v.run_id] in ("0.001", "0.003")
    # The alias sits on the better of the two (same data, split and metric): not simply the last one.
    best = max(versions, key=lambda v: (float(v.tags["selection.value"]), -int(v.version)))
    assert client.get_model_version_by_alias("demo_seg", "candidate").version == best.version
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # the env store, not the embedded one

    again = _train(tmp_path, dataset, env, "trainer.lr=0.001")
    assert "nothing new" in again.stdout
    assert len(client.search_model_versions("name='demo_seg'")) == 2
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert len(list((tmp_path / "runs" / "demo_seg").iterdir())) == 2
