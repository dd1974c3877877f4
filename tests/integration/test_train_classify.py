"""Classification: a catalog column as the class, AUC logged, model registered with its task."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.pipelines.train.run import run
from imaging.plan.train import ConfigError, validate_config
from imaging.tracking.registry import load_bundle
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = pytest.mark.integration

CLS = ["data=classification", "model=resnet", "data.classes=[CHEST,ABDOMEN]", "model.layers=[1,1,1,1]",
       "model.block_inplanes=[4,8,16,32]", "trainer.max_epochs=1", "tracking.experiment_name=cls",
       "data.split.folds=2"]  # 3 validation subjects of both classes


def test_classification_run_logs_auc_and_registers(tmp_path: Path) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    with pytest.raises(ConfigError) as excinfo:
        validate_config(compose_train(tmp_path, dataset, *CLS, "data.classes=[CHEST,PELVIS]", tiny_model=False))
    assert excinfo.value.key == "data.classes"
    with pytest.raises(ConfigError) as excinfo:
        validate_config(compose_train(tmp_path, dataset, *CLS, "trainer.monitor=dice_mean", tiny_model=False))
    assert excinfo.value.key == "trainer.monitor"

    result = run(compose_train(tmp_path, dataset, *CLS, tiny_model=False))
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    metrics = MlflowClient(tracking_uri=uri).get_run(result.run_id).data.metrics
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and "val_auc" in metrics
    bundle = load_bundle("models:/cls@candidate", tracking_uri=uri)
    assert bundle.task == "classification" and bundle.labels == {0: "CHEST", 1: "ABDOMEN"}
