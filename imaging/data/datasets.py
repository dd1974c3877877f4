"""Datasets and loaders with ``data.cache = none | memory | disk``.

- ``memory``: :class:`monai.data.CacheDataset` over *this rank's shard* only
  (``partition_dataset``), so N ranks hold one copy of the data in total, not N.
- ``disk``: :class:`monai.data.PersistentDataset` under
  ``<cache_root>/<pipeline hash>``; a changed deterministic pipeline gets a new folder.
- ``none``: load and preprocess every item every epoch.

Randomness is a pure function of ``(seed, epoch, rank, item)``: the sampler is
reseeded per epoch (:meth:`TrainLoader.start_epoch`) and hands ``(epoch, index)``
to the dataset, which seeds the random transforms for that one draw. So a resumed
run draws the same patches as an uninterrupted one, whatever the number of
loader workers, and workers can stay alive across epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import (
    CacheDataset,
    Dataset,
    PersistentDataset,
    get_track_meta,
    list_data_collate,
    partition_dataset,
    set_track_meta,
)
from monai.transforms import Compose, Randomizable
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

log = logging.getLogger(__name__)

CACHE_MODES = ("none", "memory", "disk")


def _mix(*values: int) -> int:
    seed = 0x9E3779B1
    for v in values:
        seed = (seed * 1_000_003 + int(v) + 0x7F4A7C15) % (2**32)
    return seed


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: the epoch travels with each index to the workers."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.epoch = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return ((self.epoch, int(i)) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class SeededDraws(TorchDataset):
    """``base[index]`` with the random transforms seeded from ``(seed, rank, epoch, index)``.

    ``plain_tensors``: run the (random-only) transforms without MONAI metadata
    tracking; for a memory cache, whose deterministic part is already done, this
    halves the per-step data time and the loop needs no metadata.
    """

    def __init__(self, base: Dataset, seed: int, rank: int, plain_tensors: bool = False) -> None:
        self.base = base
        self.seed = seed
        self.rank = rank
        self.plain_tensors = plain_tensors
        # One random stream shared by every random transform, reseeded per draw: the
        # draws stay a pure function of (seed, rank, epoch, index), and a draw costs one
        # reseed instead of Compose.set_random_state's new RandomState per transform
        # (a third of the data time of a demo step).
        self.stream = np.random.RandomState(0)
        for t in getattr(base.transform, "transforms", [base.transform]):
            if isinstance(t, Randomizable):
                t.set_random_state(state=self.stream)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.stream.seed(_mix(self.seed, self.rank, epoch, index))
        if not self.plain_tensors:
            return self.base[index]
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return self.base[index]
        finally:
            set_track_meta(previous)


def item_identity(item: dict[str, Any]) -> bytes:
    """The disk-cache key of an item: its fields plus size and mtime of every file it names.

    A re-ingest that rewrites ``volumes/<key>.nii.gz`` in place (same path, new
    content) gets a new key, so stale cached tensors are never served.
    """
    ident: dict[str, Any] = {}
    for key, value in sorted(item.items()):
        ident[key] = str(value)
        if isinstance(value, (str, Path)) and str(value) and Path(value).is_file():
            st = Path(value).stat()
            ident[key + ".file"] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest().encode()


def build_dataset(
    items: list[dict[str, Any]], transform: Compose, cache: str, cache_dir: Path | None, num_workers: int = 0
) -> Dataset:
    """A MONAI dataset over ``items`` with the chosen caching.

    Raises:
        ValueError: unknown ``cache`` mode or ``disk`` without ``cache_dir``.
    """
    if cache == "memory":
        # copy_cache=False: no random transform here writes into its input (crops slice,
        # flips/rotations/shifts return new tensors), and copying the cached volume with
        # its foreground indices every draw doubled the data time.
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=max(1, num_workers),
                            progress=False, copy_cache=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("data.cache=disk needs a cache directory")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir, hash_func=item_identity)
    if cache == "none":
        return Dataset(items, transform)
    raise ValueError(f"data.cache must be one of {CACHE_MODES}, got '{cache}'")


@dataclass
class TrainLoader:
    """A training loader whose randomness is reseeded per epoch."""

    loader: DataLoader
    dataset: Dataset
    sampler: Sampler
    epoch_sampler: EpochSampler
    generator: torch.Generator
    seed: int
    rank: int

    def start_epoch(self, epoch: int) -> None:
        """Reseed the sampler for ``epoch`` (the transforms are seeded per draw)."""
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_mix(self.seed, self.rank, epoch) % (2**31))
        self.epoch_sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)


def build_train_loader(
    items: list[dict[str, Any]], transform: Compose, *, cache: str, cache_dir: Path | None, batch_size: int,
    num_workers: int, seed: int, rank: int, world_size: int, drop_last: bool = False,
) -> TrainLoader:
    """Training loader for this rank.

    ``memory`` caches only this rank's shard and shuffles it locally; the other
    modes keep the full list and let a :class:`DistributedSampler` deal indices.
    ``drop_last`` drops a short last batch (BatchNorm cannot train on one whole-volume sample).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if cache == "memory" and world_size > 1:
        shard = partition_dataset(items, num_partitions=world_size, shuffle=True, seed=seed,
                                  even_divisible=True)[rank]
        dataset = build_dataset(shard, transform, cache, cache_dir, num_workers)
        sampler: Sampler = RandomSampler(dataset, generator=generator)
    else:
        dataset = build_dataset(items, transform, cache, cache_dir, num_workers)
        if world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                         drop_last=False)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    epoch_sampler = EpochSampler(sampler)
    loader = DataLoader(
        SeededDraws(dataset, seed, rank, plain_tensors=cache == "memory"), batch_size=batch_size, sampler=epoch_sampler, num_workers=num_workers,
        collate_fn=list_data_collate, persistent_workers=num_workers > 0,
        drop_last=drop_last and len(dataset) > batch_size, pin_memory=torch.cuda.is_available(),
    )
    return TrainLoader(loader=loader, dataset=dataset, sampler=sampler, epoch_sampler=epoch_sampler,
                       generator=generator, seed=seed, rank=rank)


def build_val_loader(
    items: list[dict[str, Any]], transform: Compose, *, cache: str, cache_dir: Path | None, num_workers: int,
    rank: int, world_size: int,
) -> DataLoader:
    """Validation loader over this rank's cases ``items[rank::world_size]``.

    Not padded: ranks may get different numbers of cases, and metric reduction
    sums per-case values and counts, so nothing is counted twice.
    """
    shard = items[rank::world_size]
    dataset = build_dataset(shard, transform, cache, cache_dir, num_workers)
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                      collate_fn=list_data_collate, pin_memory=torch.cuda.is_available())
