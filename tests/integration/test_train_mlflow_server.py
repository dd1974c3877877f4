"""Training against a real `mlflow server` (proxied artifacts), as on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.launch.preempt import PreemptionFlag
from imaging.pipelines.train import run
from imaging.tracking.registry import load_bundle
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = pytest.mark.integration


def test_train_resume_and_register_through_server(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    overrides = [f"tracking.uri={mlflow_server.uri}", "trainer.max_epochs=2", "tracking.experiment_name=server_exp"]
    flag = PreemptionFlag()
    flag.set()
    first = run(compose_train(tmp_path, dataset, *overrides), flag=flag)
    assert first.preempted
    second = run(compose_train(tmp_path, dataset, *overrides))
    assert second.run_id == first.run_id and not second.preempted

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("server_exp")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "val_dice_liver")) == [1, 2]
    assert "split.json" in {a.path for a in client.list_artifacts(first.run_id)}
    # Artifacts went through the server into its own store, not into our paths.
    assert list((mlflow_server.root / "artifacts").rglob("split.json"))
    assert not (tmp_path / "mlflow").exists()
    bundle = load_bundle("models:/server_exp@candidate", tracking_uri=mlflow_server.uri)
    assert bundle.run_id == first.run_id and bundle.labels[1] == "liver"
