"""Data wait vs compute per training step, per cache mode.

For ``demo_seg`` and a larger synthetic CT config (finer spacing, bigger
patches), and for each ``data.cache`` mode (none, memory, disk), run a few
training steps and measure, per step, the time spent waiting for the next batch
and the time spent computing (forward, backward, optimizer). Prints a table
with the data-wait fraction (wall time); the goal is <= 5 % with ``memory``,
and, for ``memory``, the bytes the cache holds per image voxel (goal <= 6).
``--workers 1`` prepares the next batch in a (persistent) worker process while
the main process computes.

    .venv/bin/python benchmarks/train_loader.py --dataset /tmp/t/dataset [--steps 10]

Peers are measured in the same run, so only the ratios matter.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from monai.losses import DiceCELoss
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from imaging.data.datasets import build_train_loader
from imaging.data.splits import split_by_subject
from imaging.data.transforms import build_train_transforms, pipeline_hash
from imaging.models.registry import build_network
from imaging.plan.train import validate_config
from imaging.resources import CONF_DIR

CONF = str(CONF_DIR)
CONFIGS = {
    "demo_seg": ["experiment=demo_seg"],
    "ct_large": ["experiment=demo_seg", "data.preprocessing.spacing=[2.0,2.0,2.5]", "data.patch_size=[96,96,48]",
                 "data.labels=[liver,spleen,kidney]"],
}


def measure(overrides: list[str], cache: str, steps: int, root: Path, workers: int) -> dict[str, float]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"data.cache={cache}", f"paths.root_dir={root}",
                                          f"data.num_workers={workers}"])
    plan = validate_config(cfg)
    split = split_by_subject(plan.items, int(cfg.data.split.folds), 0, 0)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    transform = build_train_transforms(plan.preprocessing, data_cfg)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    cache_dir = root / "cache" / pipeline_hash(plan.preprocessing, data_cfg)  # type: ignore[arg-type]
    loader = build_train_loader(split.train, transform, cache=cache, cache_dir=cache_dir,
                                batch_size=int(cfg.data.batch_size), num_workers=workers, seed=0, rank=0,
                                world_size=1)
    build_s = time.perf_counter() - t0
    bytes_per_voxel = cached_bytes_per_voxel(loader.dataset) if cache == "memory" else float("nan")
    net = build_network(plan.network_config)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    wait = compute = 0.0
    done = 0
    epoch = 0
    while done < steps:
        loader.start_epoch(epoch)
        it = iter(loader.loader)
        while done < steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = loss_fn(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if not (epoch == 0 and done == 0 and cache == "disk"):  # first disk pass writes the cache
                wait += t1 - t0
                compute += t2 - t1
            done += 1
        epoch += 1
    return {"build_s": build_s, "wait_s": wait, "compute_s": compute, "steps": done,
            "fraction": wait / max(1e-9, wait + compute), "bytes_per_voxel": bytes_per_voxel}


def cached_bytes_per_voxel(dataset: object) -> float:
    """Bytes of every array in a CacheDataset's items / voxels of their images."""
    total = voxels = 0
    for item in getattr(dataset, "_cache", []):
        for value in item.values():
            if isinstance(value, (torch.Tensor, np.ndarray)):
                total += value.nbytes if isinstance(value, np.ndarray) else value.element_size() * value.numel()
        voxels += int(np.prod(item["image"].shape))
    return total / max(1, voxels)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True, help="a dataset folder written by `imaging ingest`")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--configs", default="demo_seg,ct_large")
    p.add_argument("--caches", default="none,memory,disk")
    p.add_argument("--extra", default="", help="comma-separated overrides for every config")
    args = p.parse_args()
    torch.manual_seed(0)
    table = Table(title=f"train loader: data wait vs compute ({args.steps} steps, workers={args.workers})")
    for col in ("config", "cache", "set-up s", "wait ms/step", "compute ms/step", "data-wait %", "bytes/voxel"):
        table.add_column(col, justify="right")
    root = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        for name in args.configs.split(","):
            for cache in args.caches.split(","):
                extra = [o for o in args.extra.split(",") if o]
                r = measure([*CONFIGS[name], f"data.dataset_dir={args.dataset}", *extra], cache, args.steps, root,
                            args.workers)
                n = max(1, r["steps"] - (1 if cache == "disk" else 0))
                table.add_row(name, cache, f"{r['build_s']:.1f}", f"{1000 * r['wait_s'] / n:.0f}",
                              f"{1000 * r['compute_s'] / n:.0f}", f"{100 * r['fraction']:.1f}",
                              f"{r['bytes_per_voxel']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Console().print(table)


if __name__ == "__main__":
    main()
