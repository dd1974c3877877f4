"""Typed schema of the ``trainer`` and ``data`` groups, checked at compose time.

Each group is a dataclass whose fields carry their type and, in ``metadata``,
their range (``min``, ``max``, ``gt``, ``choices``). :func:`check_schema` walks a
composed config against them before any work and raises
:class:`imaging.plan.train.ConfigError` naming the dotted key, the value and
what was expected, so ``trainer.lr=-1``, ``trainer.amp=maybe`` or
``data.augment.noise_prob=2`` fail with exit 2 (the CLI error contract) instead
of deep in the loop. Hydra already refuses keys that do not exist (struct mode),
so only declared keys are checked here; a group may hold more keys than declared.
(A check of our own rather than ``OmegaConf.structured`` in the ConfigStore: the
groups are merged from several YAML files per experiment, and the ranges need a
check Hydra's typing does not do.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf


def _f(default: Any, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


PROB = {"min": 0.0, "max": 1.0}


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


def _type_ok(value: Any, hint: Any) -> bool:
    text = str(hint)
    if value is None:
        return "None" in text
    if text.startswith("list"):
        return isinstance(value, (list, tuple, ListConfig))
    if "bool" in text:
        return isinstance(value, bool)
    if "int" in text:
        return isinstance(value, int) and not isinstance(value, bool)
    if "float" in text:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if "str" in text:
        return isinstance(value, str)
    return True


def _range_problem(value: Any, meta: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"is not one of {list(meta['choices'])}"
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}"
    if "gt" in meta and value <= meta["gt"]:
        return f"must be > {meta['gt']}"
    if "length" in meta:
        items = list(value)
        if len(items) != meta["length"]:
            return f"must have {meta['length']} values"
        for item in items:
            if not isinstance(item, (int, float)) or isinstance(item, bool):
                return "must hold numbers"
            if ("each_min" in meta and item < meta["each_min"]) or ("each_max" in meta and item > meta["each_max"]):
                return f"values must be in [{meta.get('each_min')}, {meta.get('each_max')}]"
            if "each_gt" in meta and item <= meta["each_gt"]:
                return f"values must be > {meta['each_gt']}"
    return None


def _check(node: Any, schema: type, prefix: str) -> None:
    from imaging.plan.train import ConfigError

    hints = get_type_hints(schema)
    for f in fields(schema):
        key = f"{prefix}.{f.name}"
        if not isinstance(node, DictConfig) or f.name not in node:
            continue  # absent keys: the code's own default (or Hydra) decides
        value = OmegaConf.select(node, f.name, throw_on_missing=False)
        hint = hints[f.name]
        if is_dataclass(hint):
            _check(value, hint, key)  # type: ignore[arg-type]
            continue
        if not _type_ok(value, hint):
            raise ConfigError(key, f"{value!r} is not a {str(hint).replace('typing.', '')}")
        problem = _range_problem(value, dict(f.metadata))
        if problem:
            raise ConfigError(key, f"{value!r} {problem}")


def check_schema(cfg: DictConfig) -> None:
    """Check the ``trainer`` and ``data`` groups of a composed ``train`` config.

    Raises:
        ConfigError: the first key whose value has the wrong type or is out of range.
    """
    for group, schema in GROUPS.items():
        if group in cfg:
            _check(cfg[group], schema, group)
