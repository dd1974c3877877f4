"""Cross-site evaluation, the site's side (issue 31): a registered model's weights and
bundle config arrive in a Flower message; the site runs our inference on its own labelled
cases and returns aggregates only.

Per label: Dice and HD95 in mm (:class:`imaging.engine.metrics.SegMetricAccumulator`, on
each volume's own grid: the masks ``imaging infer`` writes, against the ingested labels),
the number of cases that have the label, missed organs, and mean predicted and reference
organ volumes in mL; overall the number of cases. No key, path or per-case figure leaves:
a mean over a handful of cases is already what the coordinator's training sees.

Labels are matched to the model's classes *by name* through the site's ``dataset.json``
(another hospital's ingest may number its labels differently); a label the site does not
have is absent from its figures, not a zero.

The cases are those ``imaging infer`` would run the model on: the series selection rule
stored with the model (or the coordinator's ``select``) is applied to the site's catalog
on the site, with its private side (source headers), as inference applies it; a rule
that leaves a site without a case is a site with ``n_cases=0``, not an error.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from imaging.data.items import DatasetInfo, load_dataset_info, segmentation_items
from imaging.data.splits import split_by_subject
from imaging.engine.distributed import Dist
from imaging.engine.metrics import SegMetricAccumulator
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.jobenv import DistEnv
from imaging.layout import private_dir_of
from imaging.models.registry import build_network
from imaging.selection.rules import parse_rule
from imaging.selection.select import select_series

log = logging.getLogger(__name__)

SPLITS = ("val", "all")


@dataclass(frozen=True)
class EvalRequest:
    """What the coordinator sends with the weights (the ``request`` config record, as JSON)."""

    network_config: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: dict[int, str]          # model class index -> label name (0: background)
    split: str = "all"              # val: the federation's validation split of the site; all: every labelled case
    folds: int = 5
    fold: int = 0
    seed: int = 0
    inference: dict[str, Any] | None = None  # InferenceOptions fields (overlap, sw_batch_size, device...)
    series_rule: dict[str, Any] | None = None  # the selection rule inference applies (imaging.selection); None: none

    def to_json(self) -> str:
        return json.dumps({"network_config": self.network_config, "preprocessing": self.preprocessing,
                           "labels": {str(k): v for k, v in self.labels.items()}, "split": self.split,
                           "folds": self.folds, "fold": self.fold, "seed": self.seed,
                           "inference": self.inference or {}, "series_rule": self.series_rule}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalRequest:
        """Raises: ValueError: an unknown split."""
        raw = json.loads(text)
        if raw.get("split") not in SPLITS:
            raise ValueError(f"split={raw.get('split')!r}: choose one of {list(SPLITS)}")
        return cls(raw["network_config"], raw["preprocessing"], {int(k): str(v) for k, v in raw["labels"].items()},
                   str(raw["split"]), int(raw["folds"]), int(raw["fold"]), int(raw["seed"]),
                   dict(raw.get("inference") or {}), raw.get("series_rule") or None)


def site_cases(info: DatasetInfo, request: EvalRequest, private: Path | None = None) -> list[dict[str, Any]]:
    """The site's labelled cases of the model's modality (all of them, or the validation split
    federated training uses: ``split_by_subject`` with the experiment's fold/seed), narrowed
    to the series the request's selection rule chooses (``private``: the site's private side,
    where the rule reads source headers).

    Raises:
        RuleError: the request's rule is malformed (names the key).
    """
    items = segmentation_items(info, str(request.preprocessing.get("modality") or "") or None)
    if request.split == "all" or not items:
        items = sorted(items, key=lambda i: (i["subject_key"], i["series_key"]))
    else:
        # The split first, on every labelled case as training split them: the validation
        # subjects stay those the model never trained on, whatever the rule then keeps.
        items = split_by_subject(items, request.folds, request.fold, request.seed).val
    if request.series_rule is None:
        return items
    chosen = selected_series(info, request.series_rule, private)
    return [i for i in items if i["series_key"] in chosen]


def selected_series(info: DatasetInfo, rule: dict[str, Any], private: Path | None) -> set[str]:
    """The series keys ``rule`` chooses in the site's whole catalog, as ``imaging infer`` applies it
    (per study over every row: a per_study=one tie-break sees the unlabelled series too)."""
    selection = select_series(info.rows, parse_rule(rule, "select (the model's rule)"), info.root, private)
    return {r.series_key for r in selection.rows}


def class_lookup(site_labels: Mapping[int, str], model_labels: Mapping[int, str]) -> np.ndarray:
    """A lookup table: site label value -> model class index (by name; 0 for labels the model lacks)."""
    by_name = {name: c for c, name in model_labels.items() if c != 0}
    top = max([0, *site_labels])
    table = np.zeros(top + 1, dtype=np.uint8)
    for value, name in site_labels.items():
        if value > 0 and name in by_name:
            table[value] = by_name[name]
    return table


def voxel_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm from a NIfTI affine (column lengths: oblique grids too)."""
    cols = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return float(cols[0]), float(cols[1]), float(cols[2])


def reference_labels(path: str, table: np.ndarray) -> np.ndarray:
    """The site's label map in model class indices (values beyond the table: background)."""
    image: Any = nib.load(path)  # a Nifti1Image (FileBasedImage in nibabel's stubs)
    raw = np.asanyarray(image.dataobj)
    raw = raw.reshape(raw.shape[:3]) if raw.ndim == 4 and raw.shape[3] == 1 else raw
    values = np.rint(raw).astype(np.int64)
    values[(values < 0) | (values >= len(table))] = 0
    return table[values]


def evaluate_cases(network: torch.nn.Module, request: EvalRequest, items: list[dict[str, Any]],
                   table: np.ndarray) -> dict[str, float]:
    """Predict each case with :class:`SeriesPredictor` (the model's preprocessing) and reduce
    to per-label aggregates (see module doc).

    Raises:
        ValueError: a prediction's shape differs from its label's (names the series key).
    """
    options = InferenceOptions.from_config({"device": "cpu", **(request.inference or {})})
    predictor = SeriesPredictor(network, request.preprocessing, options)
    n = len(request.labels)
    acc = SegMetricAccumulator(num_classes=n, hd95=True)
    pred_ml, true_ml = np.zeros(n), np.zeros(n)
    for item in items:
        pred, affine = predictor.predict(item["image"])
        truth = reference_labels(str(item["label"]), table)
        if truth.shape != pred.shape:
            raise ValueError(f"series {item['series_key']}: label shape {truth.shape} != volume shape {pred.shape}")
        spacing = voxel_mm(affine)
        acc.add(torch.from_numpy(pred.astype(np.int64))[None, None], torch.from_numpy(truth)[None, None], [spacing])
        ml = float(np.prod(spacing)) / 1000.0
        pred_ml += np.bincount(pred.ravel(), minlength=n)[:n] * ml
        true_ml += np.bincount(truth.ravel(), minlength=n)[:n] * ml
    out = acc.reduce(Dist(DistEnv(), torch.device("cpu")), request.labels) if items else {}
    out = {k: v for k, v in out.items() if k != "n_cases_with_labels"}
    out["n_cases"] = float(len(items))
    for c in range(1, n):
        name = request.labels.get(c, str(c))
        out[f"n_{name}"] = float(acc.dice_count[c - 1])
        if items:
            out[f"volume_pred_ml_{name}"] = float(pred_ml[c] / len(items))
            out[f"volume_ref_ml_{name}"] = float(true_ml[c] / len(items))
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def evaluate_at_site(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate_model`` operation of a site's worker: ``payload`` holds ``state``
    (name -> ndarray), ``request`` (JSON of :class:`EvalRequest`) and the SuperNode's
    ``node_config``. Returns ``{"site", "catalog_sha256", "metrics"}``: aggregates only.

    Raises:
        ConfigError: the node config lacks the site or its dataset folder.
        FileNotFoundError, ValueError: the site's dataset cannot be read.
    """
    from imaging.federated.site import SiteSettings

    settings = SiteSettings.from_node_config(payload["node_config"])
    request = EvalRequest.from_json(str(payload["request"]))
    info = load_dataset_info(settings.dataset_dir)
    network = build_network(request.network_config)
    network.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in payload["state"].items()})
    private = _private_side(payload["node_config"], settings.dataset_dir)
    items = site_cases(info, request, private)
    if request.series_rule is not None:
        labelled = site_cases(info, replace(request, series_rule=None))
        log.info("the model's selection rule keeps %d of %d labelled case(s)", len(items), len(labelled))
    log.info("evaluating the model on %d case(s) (split=%s)", len(items), request.split)
    metrics = evaluate_cases(network, request, items, class_lookup(info.labels, request.labels))
    if request.series_rule is not None:
        metrics["n_rule_excluded"] = float(len(labelled) - len(items))  # a count: what the rule left out here
    return {"site": settings.name, "catalog_sha256": info.catalog_sha256, "metrics": metrics}


def _private_side(node_config: Mapping[str, Any], dataset_dir: Path) -> Path | None:
    """The site's private side: ``private-dir`` of its node config, else ``<dataset>.private``;
    None when absent (a rule's conditions on source headers then see "unknown" and fail)."""
    given = str(node_config.get("private-dir", "") or "").strip()
    path = private_dir_of(dataset_dir, given or None)
    return path if path.is_dir() else None

