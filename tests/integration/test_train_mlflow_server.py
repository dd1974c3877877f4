"""Training against a real `mlflow server` (proxied artifacts), as on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.launch.preempt import PreemptionFlag
from imaging.pipelines.train.run import run
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
    # The reviewer's view: model-training experiment, the dataset as the run's input.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = client.get_run(first.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    tags = {t.key: t.value for t in inputs[0].tags}
    sha = runs[0].data.tags["dataset.catalog_sha256"]
    assert ds.name == f"catalog-{sha[:12]}" and ds.digest == sha[:32]
    assert tags["mlflow.data.context"] == "training" and tags["labels"] == "liver,spleen,kidney"
    assert tags["modalities"] == "CT" and tags["n_series"] == "6" and tags["n_subjects"] == "6"
    split = client.download_artifacts(first.run_id, "split.json", str(tmp_path))
    import json
    keys = {i["series_key"] for part in ("train", "val") for i in json.loads(Path(split).read_text())[part]}
    assert keys == {f"ser{i:02d}0" for i in range(6)}
    assert '"series_key"' in ds.schema and "ser000" not in ds.schema  # schema: columns, not content
    bundle = load_bundle("models:/server_exp@candidate", tracking_uri=mlflow_server.uri)
    assert bundle.run_id == first.run_id and bundle.labels[1] == "liver"
