"""Typed settings of the ``trainer`` and ``data`` groups (``imaging train``, ``federate``, ``evaluate``).

Each group is a dataclass whose fields carry their type and, in ``metadata``, their
range; :func:`check_schema` walks a composed config against them before any work
(:mod:`imaging.settings.check`), so ``trainer.lr=-1``, ``trainer.amp=maybe`` or
``data.augment.noise_prob=2`` fail with exit 2 naming the key instead of deep in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from imaging.settings.check import PROB, check_node
from imaging.settings.check import setting as _f


@dataclass
class SchedulerSchema:
    kind: str = _f("cosine", choices=("cosine", "poly", "constant"))
    warmup_epochs: int = _f(0, min=0)
    min_lr_factor: float = _f(0.0, **PROB)


@dataclass
class TrainerSchema:
    seed: int = _f(0, min=0)
    accelerator: str = _f("auto", choices=("auto", "cpu", "cuda", "gpu"))
    max_epochs: int = _f(1, min=1)
    lr: float = _f(1e-3, gt=0.0)
    weight_decay: float = _f(0.0, min=0.0)
    accumulate_grad_batches: int = _f(1, min=1)
    amp: bool = _f(True)
    amp_dtype: str = _f("float16", choices=("float16", "bfloat16"))
    grad_clip_norm: float | None = _f(None, gt=0.0)
    deterministic: bool = _f(False)
    compile: bool = _f(False)
    sync_batchnorm: bool = _f(False)
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    val_every: int = _f(1, min=1)
    monitor: str = _f("auto")
    monitor_mode: str = _f("auto", choices=("auto", "max", "min"))
    sw_batch_size: int = _f(4, min=1)
    sw_overlap: float = _f(0.25, min=0.0, max=0.95)
    hd95: bool = _f(False)
    limit_train_batches: int | None = _f(None, min=1)
    resume: str = _f("auto", choices=("auto", "never", "must"))
    progress: bool = _f(True)


@dataclass
class SplitSchema:
    folds: int = _f(5, min=1)
    fold: int = _f(0, min=0)
    seed: int = _f(0, min=0)


@dataclass
class AugmentSchema:
    affine_prob: float = _f(0.0, **PROB)
    rotate_deg: list[float] = _f(None, each_min=0.0, each_max=180.0, length=3)
    scale_range: list[float] = _f(None, each_gt=0.0, length=2)
    flip_prob: float = _f(0.0, **PROB)
    rot90_prob: float = _f(0.0, **PROB)
    noise_prob: float = _f(0.0, **PROB)
    noise_std: float = _f(0.0, min=0.0)
    blur_prob: float = _f(0.0, **PROB)
    blur_sigma: list[float] = _f(None, each_gt=0.0, length=2)
    contrast_prob: float = _f(0.0, **PROB)
    contrast_factor: float = _f(0.0, min=0.0, max=1.0)
    gamma_prob: float = _f(0.0, **PROB)
    gamma_range: list[float] = _f(None, each_gt=0.0, length=2)
    intensity_shift: float = _f(0.0, min=0.0)


@dataclass
class DataSchema:
    task: str = _f("segmentation", choices=("segmentation", "classification"))
    # Types only: the folder, the labels and the preprocessing are checked against the dataset by
    # imaging.plan.train.validate_config.
    dataset_dir: str = _f("")
    modality: str | None = _f(None)
    labels: list[str] | None = _f(None)
    cache_dir: str | None = _f(None)
    preprocessing: dict[str, Any] | None = _f(None)
    label_column: str = _f("")  # classification
    classes: list[str] | None = _f(None)
    cache: str = _f("memory", choices=("none", "memory", "disk"))
    image_dtype: str = _f("float32", choices=("float32", "float16"))
    num_workers: int = _f(0, min=0)
    batch_size: int = _f(2, min=1)
    patch_size: list[int] = _f(None, each_min=1, length=3)
    samples_per_volume: int = _f(1, min=1)
    pos_neg_ratio: float = _f(1.0, min=0.0)
    crop_foreground: bool = _f(True)
    split: SplitSchema = field(default_factory=SplitSchema)
    augment: AugmentSchema = field(default_factory=AugmentSchema)


GROUPS: dict[str, type] = {"trainer": TrainerSchema, "data": DataSchema}


def check_schema(cfg: DictConfig) -> None:
    """Check the ``trainer`` and ``data`` groups of a composed ``train`` config.

    Raises:
        ConfigError: (:mod:`imaging.plan.train`'s, which training's callers catch) the first key
            whose value has the wrong type or is out of range.
    """
    from imaging.plan.train import ConfigError  # at call time: plan imports this module

    for group, schema in GROUPS.items():
        if group in cfg:
            check_node(cfg[group], schema, group, ConfigError)
