"""Registry round trip: train, register @candidate, load by models:/ URI, same predictions."""

from __future__ import annotations

from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from imaging.apps.model import main as model_cli
from imaging.data.splits import split_by_subject
from imaging.data.transforms import build_inference_transforms
from imaging.engine.checkpoint import load_checkpoint
from imaging.engine.predict import SeriesPredictor
from imaging.models.registry import build_network
from imaging.pipelines.train.run import TrainResult, run
from imaging.plan.train import validate_config
from imaging.tracking.registry import load_bundle
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrainResult]:
    root = tmp_path_factory.mktemp("reg")
    dataset = make_train_dataset(root / "ds", subjects=6, shape=(24, 24, 12))
    result = run(compose_train(root, dataset, "trainer.max_epochs=2"))
    return root, dataset, result


def _uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


def test_run_logs_config_split_review_and_registers(trained: tuple[Path, Path, TrainResult]) -> None:
    root, _, result = trained
    assert result.registered["version"] == "1" and result.registered["alias"] == "candidate"
    client = MlflowClient(tracking_uri=_uri(root))
    run = client.get_run(result.run_id)
    assert run.data.tags["git_commit"]
    assert len(run.data.tags["dataset.catalog_sha256"]) == 64
    assert run.data.params["dataset.n_subjects"] == "6"
    assert run.data.params["model.name"] == "unet"
    paths = {a.path for folder in ("", "review", "config", "checkpoints") for a in client.list_artifacts(
        result.run_id, folder or None)}
    assert {"split.json", "config/train.yaml", "checkpoints/best.pt", "checkpoints/last.pt"} <= paths
    assert any(p.startswith("review/") and p.endswith(".png") for p in paths)
    split = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/split.json")
    assert not set(split["train_subjects"]) & set(split["val_subjects"])


def test_load_bundle_reproduces_predictions(trained: tuple[Path, Path, TrainResult]) -> None:
    root, dataset, result = trained
    bundle = load_bundle("models:/demo_seg@candidate", tracking_uri=_uri(root))
    assert (bundle.name, bundle.version, bundle.run_id, bundle.task) == ("demo_seg", "1", result.run_id,
                                                                         "segmentation")
    assert bundle.labels == {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
    assert not bundle.network.training

    plan = validate_config(compose_train(root, dataset, "trainer.max_epochs=2"))
    reference = build_network(plan.network_config)
    reference.load_state_dict(load_checkpoint(Path(result.checkpoints["best"]))["model"])
    reference.eval()
    item = split_by_subject(plan.items, 3, 0, 0).val[0]
    image = build_inference_transforms(bundle.preprocessing)({"image": item["image"]})["image"][None]
    with torch.no_grad():
        assert torch.equal(bundle.network(image.as_tensor()), reference(image.as_tensor()))

    # The pyfunc flavour (model from code, no pickle) predicts the same labels.
    pyfunc = mlflow.pyfunc.load_model(f"models:/demo_seg/{bundle.version}")
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        expected = sliding_window_inference(image.as_tensor(), bundle.preprocessing["roi_size"], 4, reference,
                                            overlap=0.25, mode="gaussian").argmax(1).numpy()
    np.testing.assert_array_equal(pyfunc.predict(image.numpy()), expected)
    local = Path(mlflow.artifacts.download_artifacts(client_uri := f"models:/demo_seg/{bundle.version}"))
    assert client_uri and not list(local.rglob("*.pkl")) and not list(local.rglob("*.pt2"))

    # A raw NIfTI in, a label map on that file's own voxel grid out (nibabel reads the shape).
    raw = pyfunc.predict([item["image"]])
    assert len(raw) == 1 and raw[0].shape == nib.load(item["image"]).shape[:3] and raw[0].dtype == np.uint8
    on_grid, _ = SeriesPredictor(reference, bundle.preprocessing).predict(item["image"])
    np.testing.assert_array_equal(raw[0], on_grid)
    assert set(np.unique(raw[0])) <= {0, 1, 2, 3}
    # Loadable elsewhere: the imaging package travels as code, requirements carry no local '+cpu' label.
    reqs = (next(local.rglob("requirements.txt"))).read_text().split()
    assert any(r.startswith("torch==") for r in reqs) and not [r for r in reqs if "+" in r]
    assert list(local.rglob("code/imaging/models/pyfunc_model.py"))


def test_promote_moves_alias(trained: tuple[Path, Path, TrainResult], capsys: pytest.CaptureFixture[str]) -> None:
    root, _, _ = trained
    uri = _uri(root)
    assert model_cli(["--tracking-uri", uri, "promote", "demo_seg", "candidate", "--alias", "champion"]) == 0
    assert load_bundle("models:/demo_seg@champion", tracking_uri=uri).version == "1"
    assert model_cli(["--tracking-uri", uri, "show", "demo_seg"]) == 0
    assert "@champion" in capsys.readouterr().out
    assert model_cli(["--tracking-uri", uri, "promote", "demo_seg", "7", "--alias", "champion"]) == 1
    with pytest.raises(ValueError, match="models:/"):
        load_bundle("demo_seg@champion", tracking_uri=uri)
