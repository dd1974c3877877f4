"""Records that cross layers, defined once (a leaf module: it imports nothing of ours).

The engine produces them, tracking and review read them; neither may import the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ReviewCase:
    """One validation case for the reviewer's images: preprocessed image, label and prediction."""

    series_key: str
    image: np.ndarray   # (X, Y, Z) in RAS after preprocessing
    label: np.ndarray   # (X, Y, Z) class indices
    pred: np.ndarray    # (X, Y, Z) class indices
    spacing: tuple[float, float, float]


PREPROCESSING_VERSION = 1
_PRE_REQUIRED = ("task", "modality", "orientation", "spacing", "intensity", "roi_size")
_PRE_OPTIONAL = ("label_mapping", "precision")  # classification has no label map; old bundles no precision


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is prepared: the contract between training, validation and inference.

    Stored in the model bundle (``bundle.json``'s ``preprocessing``) as the plain dict of
    :func:`imaging.data.transforms.preprocessing_from_config` plus ``version``, so inference
    preprocesses exactly as training did. A reader refuses a version it does not know rather
    than guess what a changed key meant; bundles written before the record have no ``version``
    and are read as version 1 when their keys are all there.
    """

    task: str
    modality: str
    orientation: str
    spacing: tuple[float, ...]
    intensity: dict[str, Any]            # kind (window | percentile) and its parameters
    roi_size: tuple[int, ...]
    label_mapping: dict[str, int] | None = None
    precision: dict[str, Any] | None = None   # {"amp", "amp_dtype"} the model was trained in
    version: int = field(default=PREPROCESSING_VERSION)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Preprocessing:
        """The record of a ``preprocessing`` dict (a bundle's, or a training plan's).

        Raises:
            ValueError: names the key: an unknown ``preprocessing.version``, a missing
                required key, or a key a version-1 record does not have.
        """
        version = raw.get("version", 1)  # written before the record existed: version 1
        if version != PREPROCESSING_VERSION:
            raise ValueError(f"preprocessing.version: {version!r} is not a version this code reads "
                             f"({PREPROCESSING_VERSION}); use the imaging release that wrote the model")
        missing = [k for k in _PRE_REQUIRED if k not in raw]
        if missing:
            raise ValueError(f"preprocessing.{missing[0]}: missing (required: {', '.join(_PRE_REQUIRED)})")
        unknown = sorted(set(raw) - {*_PRE_REQUIRED, *_PRE_OPTIONAL, "version"})
        if unknown:
            raise ValueError(f"preprocessing.{unknown[0]}: not a key of a version-{version} record")
        mapping = raw.get("label_mapping")
        precision = raw.get("precision")
        return cls(task=str(raw["task"]), modality=str(raw["modality"]), orientation=str(raw["orientation"]),
                   spacing=tuple(float(s) for s in raw["spacing"]), intensity=dict(raw["intensity"]),
                   roi_size=tuple(int(s) for s in raw["roi_size"]),
                   label_mapping=None if mapping is None else {str(k): int(v) for k, v in mapping.items()},
                   precision=None if precision is None else dict(precision), version=PREPROCESSING_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The dict the transforms and the bundle use (lists, not tuples: JSON), with ``version``."""
        out: dict[str, Any] = {"task": self.task, "modality": self.modality, "orientation": self.orientation,
                               "spacing": list(self.spacing), "intensity": dict(self.intensity),
                               "roi_size": list(self.roi_size)}
        if self.label_mapping is not None:
            out["label_mapping"] = dict(self.label_mapping)
        if self.precision is not None:
            out["precision"] = dict(self.precision)
        out["version"] = self.version
        return out
