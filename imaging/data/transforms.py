"""MONAI dictionary transforms, built from plain dicts.

The *preprocessing* dict is the contract between training, validation and
inference: it is stored with the registered model, and
:func:`build_inference_transforms` turns it into exactly the deterministic
pipeline training used. Example::

    {"task": "segmentation", "modality": "CT", "orientation": "RAS",
     "spacing": [4.0, 4.0, 5.0],
     "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
     "roi_size": [64, 64, 32], "label_mapping": {"0": 0, "1": 1, "2": 2, "3": 3}}

``intensity.kind`` is ``window`` (CT: fixed HU window) or ``percentile`` (MR:
per-volume percentile normalisation, ``lower``/``upper`` in percent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import monai
from monai import transforms as mt

# Orientation codes name the direction each axis *increases* towards (NIfTI convention).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def preprocessing_from_config(data_cfg: Mapping[str, Any], label_map: dict[int, int] | None) -> dict[str, Any]:
    """The preprocessing dict for ``data_cfg`` (the ``data`` config group).

    Raises:
        ValueError: no intensity settings for ``data.modality`` (names the key).
    """
    modality = str(data_cfg["modality"]).upper()
    intensity_cfg = dict(data_cfg["preprocessing"]["intensity"])
    if modality not in intensity_cfg:
        raise ValueError(
            f"data.preprocessing.intensity has no entry for modality '{modality}' (has {sorted(intensity_cfg)})"
        )
    intensity = dict(intensity_cfg[modality])
    intensity.setdefault("kind", "window" if modality == "CT" else "percentile")
    pre: dict[str, Any] = {
        "task": str(data_cfg["task"]),
        "modality": modality,
        "orientation": str(data_cfg["preprocessing"]["orientation"]),
        "spacing": [float(s) for s in data_cfg["preprocessing"]["spacing"]],
        "intensity": intensity,
        "roi_size": [int(s) for s in data_cfg["patch_size"]],
    }
    if label_map is not None:
        pre["label_mapping"] = {str(k): int(v) for k, v in sorted(label_map.items())}
    return pre


def _intensity(pre: Mapping[str, Any]) -> mt.MapTransform:
    cfg = dict(pre["intensity"])
    kind = cfg.pop("kind")
    if kind == "window":
        return mt.ScaleIntensityRanged(
            keys="image", a_min=float(cfg["a_min"]), a_max=float(cfg["a_max"]),
            b_min=float(cfg.get("b_min", 0.0)), b_max=float(cfg.get("b_max", 1.0)), clip=bool(cfg.get("clip", True)),
        )
    if kind == "percentile":
        return mt.ScaleIntensityRangePercentilesd(
            keys="image", lower=float(cfg.get("lower", 0.5)), upper=float(cfg.get("upper", 99.5)),
            b_min=float(cfg.get("b_min", 0.0)), b_max=float(cfg.get("b_max", 1.0)), clip=bool(cfg.get("clip", True)),
        )
    raise ValueError(f"preprocessing.intensity.kind must be 'window' or 'percentile', got '{kind}'")


def _label_map(pre: Mapping[str, Any]) -> mt.MapTransform | None:
    mapping = {int(k): int(v) for k, v in (pre.get("label_mapping") or {}).items()}
    if all(k == v for k, v in mapping.items()):
        return None
    orig = sorted(mapping)
    return mt.MapLabelValued(keys="label", orig_labels=orig, target_labels=[mapping[k] for k in orig])


def deterministic_transforms(pre: Mapping[str, Any], with_label: bool) -> list[Any]:
    """Load, channel first, orient, resample, normalise (and remap labels)."""
    seg_label = with_label and pre["task"] == "segmentation"
    keys = ["image", "label"] if seg_label else ["image"]
    modes = ("bilinear", "nearest") if seg_label else ("bilinear",)
    steps: list[Any] = [
        mt.LoadImaged(keys=keys, image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes=pre["orientation"], labels=_RAS_LABELS),
        mt.Spacingd(keys=keys, pixdim=pre["spacing"], mode=modes),
        _intensity(pre),
    ]
    if seg_label and (remap := _label_map(pre)) is not None:
        steps.append(remap)
    if pre["task"] == "classification":
        steps.append(mt.ResizeWithPadOrCropd(keys="image", spatial_size=pre["roi_size"]))
    return steps


def build_inference_transforms(preprocessing: Mapping[str, Any], with_label: bool = False) -> mt.Compose:
    """The deterministic pipeline shared by validation and inference.

    Args:
        preprocessing: the dict stored with the model (see module docstring).
        with_label: also load and resample ``label`` (validation); inference leaves it out.
    """
    return mt.Compose([*deterministic_transforms(preprocessing, with_label), mt.EnsureTyped(keys="image")])


def build_train_transforms(preprocessing: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> mt.Compose:
    """Deterministic part (cacheable) followed by patch sampling and augmentation."""
    roi = preprocessing["roi_size"]
    aug = data_cfg["augment"]
    steps = deterministic_transforms(preprocessing, with_label=True)
    if preprocessing["task"] == "segmentation":
        keys = ["image", "label"]
        if data_cfg.get("crop_foreground", True):
            steps.append(mt.CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
        steps += [
            mt.EnsureTyped(keys=keys, track_meta=False),
            mt.SpatialPadd(keys=keys, spatial_size=roi),
            # Foreground/background voxel indices once, in the cached part: the random
            # crop then draws centres without scanning the volume every step.
            mt.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
            mt.RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=roi, pos=float(data_cfg["pos_neg_ratio"]), neg=1.0,
                num_samples=int(data_cfg["samples_per_volume"]), fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),  # (it pops the index keys from its shallow copy: patches do not carry them)
        ]
    else:
        keys = ["image"]
        steps.append(mt.EnsureTyped(keys=keys, track_meta=False))
    if float(aug.get("flip_prob", 0)) > 0:
        steps += [mt.RandFlipd(keys=keys, prob=float(aug["flip_prob"]), spatial_axis=axis) for axis in range(3)]
    if float(aug.get("rot90_prob", 0)) > 0:
        # Rotate in the axial plane only: slices are thicker than pixels are wide.
        steps.append(mt.RandRotate90d(keys=keys, prob=float(aug["rot90_prob"]), max_k=3, spatial_axes=(0, 1)))
    if float(aug.get("intensity_shift", 0)) > 0:
        steps.append(mt.RandShiftIntensityd(keys="image", offsets=float(aug["intensity_shift"]), prob=0.5))
    return mt.Compose(steps)


def pipeline_hash(preprocessing: Mapping[str, Any], data_cfg: Mapping[str, Any], extra: Sequence[str] = ()) -> str:
    """A short hash of everything the cached (deterministic) part depends on.

    The disk cache lives under a folder named by it, so a changed spacing, window,
    label mapping or MONAI version never reads items cached by another pipeline.
    """
    payload = {
        "preprocessing": preprocessing,
        "crop_foreground": bool(data_cfg.get("crop_foreground", True)),
        "monai": monai.__version__,
        "extra": list(extra),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
