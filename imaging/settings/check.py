"""The walker behind every settings group: a composed config node checked against a dataclass.

Each group is a dataclass whose fields carry their type and, in ``metadata``, their range
(``min``, ``max``, ``gt``, ``lt``, ``choices``, with ``pattern`` a test for values beyond the
listed choices and ``expect`` the message then; ``length``/``each_*`` for lists; ``env_int``
for an integer that an ``${oc.env:...}`` interpolation delivers as text).
:func:`check_node` raises :class:`SettingsError` naming the dotted key, the value and what
was expected, so a bad value fails with exit 2 (the CLI error contract) at compose time
instead of deep in a job. Hydra already refuses keys that do not exist (struct mode), so
only declared keys are checked; a group may hold more keys than declared, and an absent or
``???`` key is left to the code's own default or its ``require_*`` check.
(A check of our own rather than ``OmegaConf.structured`` in the ConfigStore: the groups are
merged from several YAML files per experiment, and the ranges need a check Hydra's typing
does not do.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field, fields, is_dataclass
from typing import Any, TypeVar, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from imaging.errors import UsageError

T = TypeVar("T")
PROB = {"min": 0.0, "max": 1.0}
PORT = {"min": 1, "max": 65535}


class SettingsError(UsageError):
    """A config value of the wrong type or out of range; ``key`` is its dotted config key (exit 2)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at '{key}': {message}")
        self.key = key


# (key, message) -> the exception to raise: training keeps its own ConfigError (imaging.plan.train).
ErrorFactory = Callable[[str, str], Exception]


def setting(default: Any, **meta: Any) -> Any:
    """A dataclass field with its range in ``metadata`` (see the module docstring)."""
    return field(default=default, metadata=meta)


def _one_type_ok(value: Any, text: str, meta: dict[str, Any]) -> bool:
    if text.startswith("list"):
        return isinstance(value, (list, tuple, ListConfig))
    if text.startswith("dict"):
        return isinstance(value, (dict, DictConfig))
    if text == "bool":
        return isinstance(value, bool)
    if text == "int":
        if meta.get("env_int") and isinstance(value, str):  # ${oc.env:SLURM_...,0} resolves to text
            return value.strip().lstrip("-").isdigit()
        return isinstance(value, int) and not isinstance(value, bool)
    if text == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if text == "str":
        return isinstance(value, str)
    return text == "Any"


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _type_ok(value: Any, hint: Any, meta: dict[str, Any]) -> bool:
    parts = _hint_text(hint).split(" | ")  # X | None, str | list[str]
    if value is None:
        return "None" in parts
    return any(_one_type_ok(value, part, meta) for part in parts if part != "None")


def _list_problem(value: Any, meta: dict[str, Any]) -> str | None:
    items = list(value)
    if "length" in meta and len(items) != meta["length"]:
        return f"must have {meta['length']} values"
    if "each_choices" in meta:
        bad = [i for i in items if i not in meta["each_choices"]]
        return f"holds {bad}, not among {list(meta['each_choices'])}" if bad else None
    if not any(k.startswith("each_") for k in meta):
        return None
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            return "must hold numbers"
        if ("each_min" in meta and item < meta["each_min"]) or ("each_max" in meta and item > meta["each_max"]):
            return f"values must be in [{meta.get('each_min')}, {meta.get('each_max')}]"
        if "each_gt" in meta and item <= meta["each_gt"]:
            return f"values must be > {meta['each_gt']}"
    return None


def _range_problem(value: Any, meta: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        return _list_problem(value, meta)
    if "choices" in meta and value not in meta["choices"]:
        if "pattern" in meta and isinstance(value, str) and meta["pattern"](value):
            return None
        return meta.get("expect") or f"is not one of {list(meta['choices'])}"
    if meta.get("env_int") and isinstance(value, str):
        value = int(value)
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}"
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}"
    if "gt" in meta and value <= meta["gt"]:
        return f"must be > {meta['gt']}"
    if "lt" in meta and value >= meta["lt"]:
        return f"must be < {meta['lt']}"
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_node(node: Any, schema: type, prefix: str = "", error: ErrorFactory = SettingsError) -> None:
    """Check the declared keys of ``node`` (a composed group, ``prefix`` its dotted key).

    Raises:
        SettingsError: (or what ``error`` makes of the key and the message) the first key whose
            value has the wrong type or is out of range.
    """
    hints = get_type_hints(schema)
    for f in fields(schema):
        key = _join(prefix, f.name)
        if not isinstance(node, DictConfig) or f.name not in node or OmegaConf.is_missing(node, f.name):
            continue  # absent keys: the code's own default (or Hydra) decides; ??? keys: require_*
        try:
            value = OmegaConf.select(node, f.name, throw_on_missing=False)
        except InterpolationResolutionError:
            continue  # e.g. ${model_uri} still ???: the command's own "is required" message says it better
        hint = hints[f.name]
        if is_dataclass(hint):
            check_node(value, hint, key, error)  # type: ignore[arg-type]
            continue
        meta = dict(f.metadata)
        if not _type_ok(value, hint, meta):
            raise error(key, f"{value!r} is not a {_hint_text(hint)}")
        problem = _range_problem(value, meta)
        if problem:
            raise error(key, f"{value!r} {problem}")


def build(schema: type[T], node: DictConfig, prefix: str = "") -> T:
    """The checked group as its dataclass: declared keys from ``node``, the rest the dataclass defaults.

    Raises:
        SettingsError: as :func:`check_node`.
    """
    check_node(node, schema, prefix)
    hints = get_type_hints(schema)
    values: dict[str, Any] = {}
    for f in fields(schema):  # type: ignore[arg-type]
        if f.name not in node or OmegaConf.is_missing(node, f.name):
            continue
        value = OmegaConf.select(node, f.name, throw_on_missing=False)
        if is_dataclass(hints[f.name]):
            values[f.name] = build(hints[f.name], value, _join(prefix, f.name))
        elif isinstance(value, (DictConfig, ListConfig)):
            values[f.name] = OmegaConf.to_container(value, resolve=True)
        else:
            values[f.name] = value
    return schema(**values)
