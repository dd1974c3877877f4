"""Validate a training config in one place, before any work starts.

:func:`validate_config` checks every key a run depends on and raises
:class:`ConfigError` naming the key (``data.dataset_dir``, ``data.labels``,
``model.channels``...) and the offending value. Unknown group options
(``model=foo``) are already refused by Hydra at compose time with the group's
name. The checked, derived facts come back as a :class:`TrainPlan` so nothing is
read twice. Central training (:mod:`imaging.pipelines.train`), the federated sites and
the launch pre-flight checks all start from this plan, hence its place below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from imaging.data.items import (
    DatasetInfo,
    classification_items,
    label_mapping,
    load_dataset_info,
    segmentation_items,
)
from imaging.data.transforms import preprocessing_from_config
from imaging.errors import UsageError, closest
from imaging.models.registry import check_network_config, network_task
from imaging.plan.identity import config_hash
from imaging.settings.train import check_schema

TASKS = ("segmentation", "classification")
CACHES = ("none", "memory", "disk")
RESUME = ("auto", "never", "must")
MONITOR_MODES = ("auto", "max", "min")
# Metrics where lower is better (distances); every other validation metric is maximised.
LOWER_IS_BETTER = ("hd95_",)


class ConfigError(UsageError):
    """A config value that cannot work; ``key`` is its dotted config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at '{key}': {message}")
        self.key = key


@dataclass
class TrainPlan:
    """What validation derived from the config (all plain, picklable)."""

    task: str
    dataset: DatasetInfo
    items: list[dict[str, Any]]
    class_names: dict[int, str]          # class index -> name (0 = background for segmentation)
    network_config: dict[str, Any]       # the resolved model dict, out_channels filled in
    preprocessing: dict[str, Any]
    run_dir: Path
    config_hash: str = ""                # imaging.plan.identity.config_hash: part of run_dir
    monitor: str = "dice_mean"           # trainer.monitor, 'auto' resolved: a metric validate() returns
    monitor_mode: str = "max"            # trainer.monitor_mode, 'auto' resolved from the metric

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_UNSET = object()


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(key, "is required (still '???'): set it on the command line, e.g. "
                          f"{key}=...") from exc
    except InterpolationResolutionError as exc:
        raise ConfigError(key, f"cannot be resolved: {exc}") from exc
    if value is _UNSET or value is None:
        raise ConfigError(key, "is not set")
    return value


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = str(_get(cfg, key))
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not one of {list(allowed)}")
    return value


def _positive(cfg: DictConfig, key: str) -> int:
    value = _get(cfg, key)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")
    return value


def _network_config(model_cfg: Mapping[str, Any], num_classes: int, task: str) -> dict[str, Any]:
    net = dict(model_cfg)
    name = str(net.get("name", ""))
    try:
        net_task = network_task(name)
    except KeyError as exc:
        raise ConfigError("model.name", str(exc.args[0])) from exc
    if net_task != task:
        raise ConfigError("model.name", f"'{name}' is a {net_task} network but data.task is '{task}'")
    for key in ("out_channels", "num_classes"):
        if key in net and net[key] is None:
            net[key] = num_classes  # filled from the labels, so the two never disagree
    try:
        check_network_config(net)
    except ValueError as exc:
        key = str(exc).split(":")[0]
        raise ConfigError(key, str(exc)) from exc
    return net


def _check_devices(cfg: DictConfig) -> None:
    """A GPU asked for but absent is an error here, not a silent CPU run later."""
    import torch

    accelerator = str(_get(cfg, "trainer.accelerator"))
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"'{accelerator}' but no CUDA device is visible on this machine "
                          "(CUDA_VISIBLE_DEVICES, the job's --gpus) ; use trainer.accelerator=cpu or auto")
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if (on_gpu and bool(cfg.trainer.get("amp", False)) and str(cfg.trainer.get("amp_dtype")) == "bfloat16"
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError("trainer.amp_dtype", "bfloat16 is not supported by this GPU; use float16")


def precision_record(cfg: DictConfig) -> dict[str, Any]:
    """``{"amp", "amp_dtype"}``: the one precision setting of training, validation, inference, the model.

    AMP applies on CUDA only, at every stage alike (:func:`imaging.engine.loops.autocast`).
    """
    return {"amp": bool(cfg.trainer.get("amp", True)), "amp_dtype": str(cfg.trainer.get("amp_dtype", "float16"))}


def monitor_choices(task: str, names: Mapping[int, str], hd95: bool) -> list[str]:
    """The metrics :func:`imaging.engine.loops.validate` returns for this run (what may be monitored)."""
    if task == "classification":
        return ["auc", "accuracy"]
    labels = [name for index, name in sorted(names.items()) if index != 0]
    out = ["dice_mean", *(f"dice_{n}" for n in labels)]
    return out + (["hd95_mean", *(f"hd95_{n}" for n in labels)] if hd95 else [])


def _monitor(monitor: str, mode: str, task: str, names: Mapping[int, str], hd95: bool) -> tuple[str, str]:
    """Resolve ``trainer.monitor``/``monitor_mode`` (``auto``) and refuse what would never select an epoch.

    A misspelt label (``dice_livr``) or ``hd95_*`` without ``trainer.hd95=true`` would read NaN
    every epoch (no best.pt, the last epoch registered); ``max`` on a distance keeps the worst epoch.

    Raises:
        ConfigError: ``trainer.monitor`` is not a metric this run computes, or ``trainer.monitor_mode``
            goes against the metric's direction.
    """
    if monitor == "auto":
        monitor = "dice_mean" if task == "segmentation" else "auc"
    choices = monitor_choices(task, names, hd95)
    if monitor not in choices:
        if not hd95 and monitor in monitor_choices(task, names, True):
            raise ConfigError("trainer.monitor", f"'{monitor}' is computed only with trainer.hd95=true "
                              "(set it, or monitor a Dice)")
        hint = closest(monitor, choices)
        raise ConfigError("trainer.monitor", f"'{monitor}' is not a validation metric of this {task} run"
                          + (f" ({hint})" if hint and hint.startswith("did") else "")
                          + f"; choices: {', '.join(choices)}")
    natural = "min" if monitor.startswith(LOWER_IS_BETTER) else "max"
    if mode not in ("auto", natural):
        direction = "lower" if natural == "min" else "higher"
        raise ConfigError("trainer.monitor_mode", f"'{mode}' would keep the worst epoch of {monitor} "
                          f"({direction} is better): use trainer.monitor_mode={natural} or auto")
    return monitor, natural


def validate_config(cfg: DictConfig) -> TrainPlan:
    """Check ``cfg`` (the composed ``train`` config) and derive the plan.

    Raises:
        ConfigError: names the key: a ``trainer``/``data`` value of the wrong type or
            out of range (:mod:`imaging.settings.train`), a GPU asked for but absent,
            missing dataset folder/catalog/dataset.json,
            labels not in ``dataset.json`` or not present in any catalog row,
            a ``trainer.monitor`` this run does not compute or a ``monitor_mode`` against it,
            no usable items, unknown network or network argument, bad trainer values.
    """
    check_schema(cfg)
    _check_devices(cfg)
    task = _choice(cfg, "data.task", TASKS)
    _choice(cfg, "data.cache", CACHES)
    _choice(cfg, "trainer.resume", RESUME)
    mode = _choice(cfg, "trainer.monitor_mode", MONITOR_MODES)
    for key in ("trainer.max_epochs", "trainer.accumulate_grad_batches", "data.batch_size",
                "trainer.val_every", "data.split.folds"):
        _positive(cfg, key)
    if _get(cfg, "data.num_workers") < 0:
        raise ConfigError("data.num_workers", "must be >= 0")
    monitor = str(_get(cfg, "trainer.monitor"))
    patch = list(_get(cfg, "data.patch_size"))
    if len(patch) != 3 or any(int(p) < 1 for p in patch):
        raise ConfigError("data.patch_size", f"must be three positive sizes, got {patch}")

    dataset_dir = _get(cfg, "data.dataset_dir")
    try:
        info = load_dataset_info(dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("data.dataset_dir", str(exc)) from exc

    modality = cfg.data.get("modality")
    if task == "segmentation":
        wanted = OmegaConf.to_container(cfg.data.labels) if cfg.data.get("labels") is not None else None
        try:
            mapping, names = label_mapping(info, wanted)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError("data.labels", str(exc)) from exc
        items = segmentation_items(info, modality)
        if not items:
            raise ConfigError("data.dataset_dir", f"no ok {modality or ''} rows with a label_path in "
                              f"{info.root / 'catalog.csv'} (labels are not in the catalog)")
        label_map: dict[int, int] | None = mapping
    else:
        classes = [str(c) for c in (cfg.data.get("classes") or [])]
        if len(classes) < 2:
            raise ConfigError("data.classes", f"needs at least two class values, got {classes}")
        try:
            items = classification_items(info, modality, str(cfg.data.label_column), classes)
        except ValueError as exc:
            raise ConfigError("data.label_column", str(exc)) from exc
        present = {i["label"] for i in items}
        absent = [c for k, c in enumerate(classes) if k not in present]
        if absent:
            raise ConfigError("data.classes", f"{absent} never occur in column '{cfg.data.label_column}' "
                              f"of {info.root / 'catalog.csv'}")
        names = dict(enumerate(classes))
        label_map = None

    n_subjects = len({i["subject_key"] for i in items})
    if n_subjects < int(cfg.data.split.folds):
        raise ConfigError("data.split.folds", f"{cfg.data.split.folds} folds but only {n_subjects} subject(s) "
                          f"with usable rows in {info.root / 'catalog.csv'}")
    if not 0 <= int(cfg.data.split.fold) < int(cfg.data.split.folds):
        raise ConfigError("data.split.fold", f"must be in [0, {cfg.data.split.folds}), got {cfg.data.split.fold}")

    monitor, mode = _monitor(monitor, mode, task, names, bool(cfg.trainer.get("hd95", False)))
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    try:
        pre = preprocessing_from_config(data_cfg, label_map)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError("data.preprocessing.intensity", str(exc)) from exc
    # The precision travels with the model (bundle.json's preprocessing): inference autocasts in the
    # dtype it was trained and validated in, not in the device's default.
    pre["precision"] = precision_record(cfg)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net = _network_config(model_cfg, len(names), task)  # type: ignore[arg-type]
    return TrainPlan(task=task, dataset=info, items=items, class_names=names, network_config=net,
                     preprocessing=pre, run_dir=Path(str(_get(cfg, "run_dir"))), config_hash=config_hash(cfg),
                     monitor=monitor, monitor_mode=mode)
