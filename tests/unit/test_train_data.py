"""Datasets, caching, transforms and the network factory."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, PersistentDataset
from omegaconf import OmegaConf

from imaging.data.datasets import build_train_loader
from imaging.data.splits import split_by_subject
from imaging.data.transforms import (
    build_inference_transforms,
    build_train_transforms,
    pipeline_hash,
)
from imaging.engine.loops import lr_lambda
from imaging.models.registry import NETWORKS, build_network
from imaging.plan.train import validate_config
from tests.fixtures.train_data import compose_train, make_train_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # -> (cfg, plan, data_cfg, root)
    root = tmp_path_factory.mktemp("data")
    dataset = make_train_dataset(root / "ds", subjects=6, shape=(24, 24, 12))
    cfg = compose_train(root, dataset)
    return cfg, validate_config(cfg), OmegaConf.to_container(cfg.data, resolve=True), root


def test_inference_transforms_resample_to_ras_and_window(setup) -> None:
    _, plan, _, _ = setup
    item = plan.items[0]
    out = build_inference_transforms(plan.preprocessing, with_label=True)(dict(item))
    image, label = out["image"], out["label"]
    assert image.shape[0] == 1 and image.shape == label.shape
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert set(torch.unique(label.as_tensor()).tolist()) <= {0, 1, 2, 3}
    spacing = torch.linalg.norm(torch.as_tensor(image.affine)[:3, :3], dim=0)
    assert torch.allclose(spacing.double(), torch.tensor(plan.preprocessing["spacing"]).double())


def test_train_batches_are_patches_and_deterministic_per_epoch(setup) -> None:
    _, plan, data_cfg, _ = setup
    items = split_by_subject(plan.items, 3, 0, 0).train

    def first_batch(epoch: int) -> torch.Tensor:
        loader = build_train_loader(items, build_train_transforms(plan.preprocessing, data_cfg), cache="none",
                                    cache_dir=None, batch_size=2, num_workers=0, seed=3, rank=0, world_size=1)
        loader.start_epoch(epoch)
        return next(iter(loader.loader))["image"].as_tensor()

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert tuple(a.shape[2:]) == tuple(plan.preprocessing["roi_size"])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_memory_cache_holds_only_this_ranks_shard(setup) -> None:
    _, plan, data_cfg, _ = setup
    items = plan.items
    shards = []
    for rank in (0, 1):
        loader = build_train_loader(items, build_train_transforms(plan.preprocessing, data_cfg), cache="memory",
                                    cache_dir=None, batch_size=1, num_workers=0, seed=0, rank=rank, world_size=2)
        assert isinstance(loader.dataset, CacheDataset)
        assert len(loader.dataset) == len(items) // 2
        shards.append({d["series_key"] for d in loader.dataset.data})
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {i["series_key"] for i in items}


def test_disk_cache_folder_is_keyed_by_the_pipeline(setup) -> None:
    _, plan, data_cfg, root = setup
    base = pipeline_hash(plan.preprocessing, data_cfg)
    assert base == pipeline_hash(dict(plan.preprocessing), dict(data_cfg))
    changed = {**plan.preprocessing, "spacing": [2.0, 2.0, 2.0]}
    assert pipeline_hash(changed, data_cfg) != base
    assert pipeline_hash(plan.preprocessing, {**data_cfg, "crop_foreground": False}) != base
    cache_dir = root / "cache" / base
    loader = build_train_loader(plan.items[:2], build_train_transforms(plan.preprocessing, data_cfg), cache="disk",
                                cache_dir=cache_dir, batch_size=1, num_workers=0, seed=0, rank=0, world_size=1)
    assert isinstance(loader.dataset, PersistentDataset)
    next(iter(loader.loader))
    assert list(cache_dir.glob("*.pt"))


def test_lr_schedule_warmup_then_decay() -> None:
    f = lr_lambda("cosine", warmup_steps=4, total_steps=20, min_factor=0.1)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(19) < f(10) < f(4) <= 1.0 and f(20) == pytest.approx(0.1)
    assert lr_lambda("poly", 0, 10)(10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="scheduler"):
        lr_lambda("step", 0, 10)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_builds_from_its_shipped_config(name: str, setup) -> None:
    from hydra import compose, initialize_config_dir

    from tests.fixtures.train_data import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        model_cfg = OmegaConf.to_container(compose("train", overrides=[f"model={name}"]).model)
    for key in ("out_channels", "num_classes"):
        if key in model_cfg:
            model_cfg[key] = 3
    if name == "swinunetr":
        model_cfg["feature_size"] = 12
    net = build_network(model_cfg)
    size = {"unet": 16, "segresnet": 16, "swinunetr": 64}.get(name, 32)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 1, size, size, size))
    assert out.shape[1] == 3


def test_dice_and_hd95_per_label_skip_absent_labels() -> None:
    from imaging.engine.distributed import Dist
    from imaging.engine.metrics import SegMetricAccumulator
    from imaging.jobenv import DistEnv

    target = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    target[..., 4:10, 4:10, 4:10] = 1
    shifted = torch.roll(target, shifts=2, dims=2)
    acc = SegMetricAccumulator(num_classes=3, hd95=True)
    per_case = acc.add(shifted, target)
    assert torch.isnan(per_case[0, 1])  # label 2 is absent: not a 0, not a 1
    out = acc.reduce(Dist(env=DistEnv(), device=torch.device("cpu")), {1: "a", 2: "b"})
    assert out["dice_a"] == pytest.approx(2 * 4 * 36 / (2 * 216))
    assert out["hd95_a"] == pytest.approx(2.0)
    assert "dice_b" not in out and out["dice_mean"] == out["dice_a"]
