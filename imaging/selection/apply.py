"""The hooks `imaging infer` and registration call: resolve the rule, subset labels, finish outputs.

Which rule applies (``select`` in ``imaging/conf/infer.yaml``, group ``imaging/conf/inference/select``):

* ``use_model_rule: true`` (the default, ``from_model.yaml``): the rule stored with
  the registered model; other non-null keys of ``select`` (``per_study``,
  ``tie_break``, ``qc``, ``flags``) replace the model's. A model without a rule: no
  selection (every series of the model's modality, as before rules existed).
* any other choice (``inference/select@select=ct_axial_soft``, or keys given in full):
  that rule replaces the model's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom.catalog import CatalogRow
from imaging.errors import UsageError, closest
from imaging.keys import Pseudonymizer
from imaging.selection.report import preview, series_outputs, write_study_report
from imaging.selection.rules import Rule, RuleError, parse_rule
from imaging.selection.select import Selection, select_series

log = logging.getLogger(__name__)


def _plain(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return obj


def resolve_rule(select_cfg: Mapping[str, Any] | None, model_rule: Mapping[str, Any] | None) -> Rule | None:
    """The rule this run applies (see the module docstring); None: no selection.

    Raises:
        RuleError: the configured or the stored rule is malformed (names the key).
    """
    cfg = dict(_plain(select_cfg) or {})
    if cfg.pop("use_model_rule", False):
        overrides = {k: v for k, v in cfg.items() if v is not None}
        if model_rule is None:
            if overrides:
                log.warning("select: the model has no stored rule; %s ignored", sorted(overrides))
            return None
        return parse_rule({**dict(model_rule), **overrides}, "select (the model's rule)")
    return parse_rule(cfg, "select")


def rule_for_registry(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The rule a training config registers with its model (``select``), validated; None when absent.

    Raises:
        RuleError: the rule is malformed (names the key), before any training.
    """
    raw = _plain(cfg.get("select")) if hasattr(cfg, "get") else None
    if not raw:
        return None
    raw = {k: v for k, v in dict(raw).items() if k != "use_model_rule"}
    return parse_rule(raw, "select").source


def label_subset(labels: Mapping[int, str], wanted: Sequence[str] | None) -> dict[int, str]:
    """The model's labels restricted to ``inference.labels`` (None/empty: all of them).

    Raises:
        UsageError: a wanted name is not one of the model's labels (names ``inference.labels[i]``).
    """
    names = {int(v): str(n) for v, n in labels.items()}
    if not wanted:
        return names
    by_name = {n: v for v, n in names.items() if v != 0}
    keep: dict[int, str] = {v: n for v, n in names.items() if v == 0}
    for i, name in enumerate(wanted):
        if str(name) not in by_name:
            raise UsageError(f"inference.labels[{i}]: '{name}' is not a label of the model "
                             f"({sorted(by_name)})", closest(str(name), by_name))
        keep[by_name[str(name)]] = str(name)
    return keep


class LabelSubsetPredictor:
    """A predictor whose inverted label maps hold only the kept labels (the others set to 0).

    Wraps :class:`imaging.engine.predict.SeriesPredictor` (every other attribute is the
    wrapped one's), so the NIfTI, the SEG, the RTSTRUCT and the volumes all see the subset.
    """

    def __init__(self, inner: Any, keep: Sequence[int]) -> None:
        self.inner = inner
        self.keep = np.asarray(sorted(int(v) for v in keep if int(v) != 0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def invert(self, prepared: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
        labels, affine = self.inner.invert(prepared, label)
        return np.where(np.isin(labels, self.keep), labels, 0).astype(labels.dtype), affine


@dataclass
class OutputSettings:
    """``output.*`` of ``imaging/conf/infer.yaml`` and what the finishing step needs."""

    rtstruct: bool = False
    preview: bool = False
    identity: str = "deidentified"
    window: tuple[float, float] | None = None
    deid_options: Any = None  # the SEG's DeidOptions: the RTSTRUCT header gets the same pseudonyms


def plan_selection(rule: Rule | None, catalog: list[CatalogRow], dataset: Path,
                   private: Path | None) -> Selection | None:
    """Apply ``rule`` to the whole catalog (None when there is no rule)."""
    if rule is None:
        return None
    return select_series(catalog, rule, dataset, private)


def finish(out: Path, selection: Selection | None, keys: Sequence[str], *, dataset: Path, private: Path | None,
           names: Mapping[int, str], model_name: str, model_version: str, settings: OutputSettings,
           pseudonymizer: Pseudonymizer | None) -> Path | None:
    """After this shard's batch: per-series RTSTRUCT/flags, per-study previews, the study report.

    ``keys``: this shard's series (outputs are made only for them; the report covers all).
    Returns the study report path (None without a selection).
    """
    flags_cfg = selection.rule.flags if selection else {"empty_mask": True, "border": True, "volume_ml": {}}
    for key in keys:
        if (out / "done" / f"{key}.json").is_file():
            series_outputs(out, key, names=names, flags_cfg=flags_cfg, private=private, rtstruct=settings.rtstruct,
                           identity=settings.identity, pseudonymizer=pseudonymizer, model_name=model_name,
                           model_version=model_version, deid_options=settings.deid_options)
    if selection is None:
        return None
    if settings.preview:
        mine = set(keys)
        for study in selection.studies:
            chosen = [k for k in study.selected if k in mine]
            row = next((r for r in selection.rows if chosen and r.series_key == chosen[0]), None)
            if row is not None:
                preview(out, study.study_key, row.series_key, dataset, row.volume_path, names, settings.window)
    return write_study_report(out, selection)


__all__ = ["LabelSubsetPredictor", "OutputSettings", "Rule", "RuleError", "Selection", "finish", "label_subset",
           "plan_selection", "resolve_rule", "rule_for_registry", "write_study_report"]
