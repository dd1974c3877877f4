"""Run identity (config hash), cache keys on data identity, and the compact memory cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from imaging.data.datasets import build_dataset, item_identity
from imaging.data.splits import split_by_subject
from imaging.data.transforms import build_train_transforms
from imaging.plan.identity import RESUMABLE, config_hash, differing_keys, identity_config
from imaging.plan.train import validate_config
from imaging.resources import CONF_DIR
from tests.fixtures.train_data import make_train_dataset

CONF = str(CONF_DIR)


def shipped(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["experiment=demo_seg", "data.dataset_dir=/data/ds", *overrides])


def test_hash_follows_what_is_trained_not_where_or_how_long() -> None:
    base = shipped()
    same = [shipped("trainer.max_epochs=300"), shipped("paths.root_dir=/elsewhere"), shipped("data.num_workers=4"),
            shipped("tracking.uri=http://mlflow:5000"), shipped("data.dataset_dir=/moved/ds"),
            shipped("launcher=slurm"), shipped("trainer.progress=false")]
    for cfg in same:
        assert config_hash(cfg) == config_hash(base) and cfg.run_dir.endswith(f"-cfg{config_hash(base)}")
    other = {"trainer.lr": shipped("trainer.lr=0.01"), "model.channels": shipped("model.channels=[8,16,32,64]"),
             "data.augment.gamma_prob": shipped("data.augment.gamma_prob=0.0"),
             "data.split.fold": shipped("data.split.fold=1")}
    hashes = {config_hash(cfg) for cfg in other.values()}
    assert config_hash(base) not in hashes and len(hashes) == len(other)
    for key, cfg in other.items():
        assert differing_keys(identity_config(base), identity_config(cfg)) == [key]
        assert cfg.run_dir != base.run_dir
    assert not any(k.startswith(RESUMABLE) for k in identity_config(base))


def test_disk_cache_key_changes_when_a_file_is_rewritten_in_place(tmp_path: Path) -> None:
    vol = tmp_path / "v.nii.gz"
    vol.write_bytes(b"one")
    item = {"image": str(vol), "series_key": "s1"}
    first = item_identity(item)
    assert item_identity(dict(item)) == first
    vol.write_bytes(b"second content")  # a re-ingest to the same path
    os.utime(vol, ns=(1, 1))
    assert item_identity(item) != first


def test_memory_cache_holds_at_most_six_bytes_per_voxel(tmp_path: Path) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=4, shape=(40, 40, 20))
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo_seg", f"data.dataset_dir={dataset}",
                                          f"paths.root_dir={tmp_path}", "data.patch_size=[16,16,8]"])
    plan = validate_config(cfg)
    items = split_by_subject(plan.items, 4, 0, 0).train
    for dtype, limit in (("float32", 6.0), ("float16", 4.0)):
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        data_cfg["image_dtype"] = dtype  # type: ignore[index]
        ds = build_dataset(items, build_train_transforms(plan.preprocessing, data_cfg), "memory", None)  # type: ignore[arg-type]
        total = voxels = 0
        for cached in ds._cache:  # type: ignore[attr-defined]
            assert cached["label"].dtype == torch.uint8
            assert cached["image"].dtype == getattr(torch, dtype)
            assert cached["label_fg_indices"].dtype == np.int32
            total += sum(v.nbytes if isinstance(v, np.ndarray) else v.element_size() * v.numel()
                         for v in cached.values() if isinstance(v, (np.ndarray, torch.Tensor)))
            voxels += int(np.prod(cached["image"].shape))
        assert total / voxels <= limit, (dtype, total / voxels)
        patch = ds[0][0]
        assert patch["image"].dtype == torch.float32 and tuple(patch["image"].shape) == (1, 16, 16, 8)


@pytest.mark.parametrize("override", ["model=dynunet", "model=unet"])
def test_network_options_build_and_train_one_step(override: str) -> None:
    from imaging.engine.loops import _seg_outputs
    from imaging.engine.recipe import build_loss
    from imaging.models.registry import build_network

    cfg = shipped(override)
    net_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net_cfg["out_channels"] = 4  # type: ignore[index]
    net = build_network(net_cfg)  # type: ignore[arg-type]
    loss_fn = build_loss("segmentation", net_cfg)  # type: ignore[arg-type]
    image = torch.rand(2, 1, 32, 32, 16)
    target = torch.randint(0, 4, (2, 1, 32, 32, 16)).float()
    loss = loss_fn(_seg_outputs(net(image), image), target)
    loss.backward()
    assert torch.isfinite(loss)
    net.eval()
    with torch.no_grad():
        assert net(image).shape == (2, 4, 32, 32, 16)  # evaluation sees the main head only


def test_store_order_and_activate_leaves_the_environment_alone(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from imaging.tracking.store import activate, tracking_uri

    db = tmp_path / "mlflow" / "mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, db) == f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-store:5000")
    assert tracking_uri(None, db) == "http://env-store:5000"
    assert tracking_uri("http://explicit:5000", db) == "http://explicit:5000"
    # MLflow's set_tracking_uri writes the variable: a second run in this process must not
    # mistake the first run's store for the user's choice.
    activate(f"sqlite:///{tmp_path / 'a.db'}")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://env-store:5000"
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    activate(f"sqlite:///{tmp_path / 'b.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ
