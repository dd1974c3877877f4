"""MONAI dictionary transforms, built from plain dicts.

The *preprocessing* dict (its versioned record in the model bundle:
:class:`imaging.records.Preprocessing`) is the contract between training, validation and
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
import math
from collections.abc import Mapping, Sequence
from typing import Any

import monai
import numpy as np
import torch
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


IMAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
BG_INDEX_FRACTION = 8  # keep 1 background index in 8 (see CompactIndicesd)


class CompactIndicesd(mt.MapTransform):
    """Shrink the cached crop-centre indices: int32, and a fixed random 1/``fraction``
    of the background ones.

    MONAI's :class:`~monai.transforms.FgBgToIndicesd` keeps every voxel's index as
    int64 (8 bytes per voxel on top of the volume); a background centre drawn from
    a uniform subset is still a uniform background centre, and int32 holds any
    index of a volume under 2**31 voxels. Hand-written because MONAI has no option
    for either.
    """

    def __init__(self, keys: Sequence[str], fraction: int = BG_INDEX_FRACTION, seed: int = 0) -> None:
        super().__init__(keys)
        self.fraction = fraction
        self.seed = seed

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d: dict[Any, Any] = dict(data)
        for key in self.key_iterator(d):
            idx = np.asarray(d[key])
            if key.endswith("_bg_indices") and len(idx) > self.fraction:
                keep = math.ceil(len(idx) / self.fraction)
                pick = np.random.default_rng(self.seed + len(idx)).choice(len(idx), keep, replace=False)
                idx = idx[np.sort(pick)]
            d[key] = idx.astype(np.int32) if idx.size == 0 or idx.max() < 2**31 else idx
        return d


def _augment(aug: Mapping[str, Any], keys: list[str], seg: bool) -> list[Any]:
    """Random augmentation after the crop (nnU-Net's set, probabilities from ``data.augment``)."""
    steps: list[Any] = []
    p = lambda name: float(aug.get(name, 0) or 0)  # noqa: E731
    if p("affine_prob") > 0:
        rot = [math.radians(float(a)) for a in aug.get("rotate_deg", [15.0, 15.0, 15.0])]
        lo, hi = (float(s) for s in aug.get("scale_range", [0.85, 1.25]))
        steps.append(mt.RandAffined(
            keys=keys, prob=p("affine_prob"), rotate_range=rot, scale_range=[(lo - 1.0, hi - 1.0)] * 3,
            mode=("bilinear", "nearest") if seg else "bilinear", padding_mode="border"))
    if p("flip_prob") > 0:
        steps += [mt.RandFlipd(keys=keys, prob=p("flip_prob"), spatial_axis=axis) for axis in range(3)]
    if p("rot90_prob") > 0:
        # Rotate in the axial plane only: slices are thicker than pixels are wide.
        steps.append(mt.RandRotate90d(keys=keys, prob=p("rot90_prob"), max_k=3, spatial_axes=(0, 1)))
    if p("noise_prob") > 0:
        steps.append(mt.RandGaussianNoised(keys="image", prob=p("noise_prob"), std=float(aug.get("noise_std", 0.05))))
    if p("blur_prob") > 0:
        lo_s, hi_s = (float(s) for s in aug.get("blur_sigma", [0.5, 1.0]))
        sig = (lo_s, hi_s)
        steps.append(mt.RandGaussianSmoothd(keys="image", prob=p("blur_prob"), sigma_x=sig, sigma_y=sig,
                                            sigma_z=sig))
    if p("contrast_prob") > 0:  # nnU-Net's "contrast": multiply intensities
        steps.append(mt.RandScaleIntensityd(keys="image", prob=p("contrast_prob"),
                                            factors=float(aug.get("contrast_factor", 0.25))))
    if p("gamma_prob") > 0:
        g = [float(s) for s in aug.get("gamma_range", [0.7, 1.5])]
        steps.append(mt.RandAdjustContrastd(keys="image", prob=p("gamma_prob"), gamma=(g[0], g[1])))
    if p("intensity_shift") > 0:
        steps.append(mt.RandShiftIntensityd(keys="image", offsets=p("intensity_shift"), prob=0.5))
    return steps


def build_train_transforms(preprocessing: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> mt.Compose:
    """Deterministic part (cacheable) followed by patch sampling and augmentation.

    The cached part holds the label as uint8 and the image as ``data.image_dtype``
    (float16 halves the memory cache); patches are float32 again before augmentation.

    Raises:
        ValueError: unknown ``data.image_dtype``.
    """
    roi = preprocessing["roi_size"]
    aug = data_cfg["augment"]
    dtype_name = str(data_cfg.get("image_dtype", "float32"))
    if dtype_name not in IMAGE_DTYPES:
        raise ValueError(f"data.image_dtype must be one of {sorted(IMAGE_DTYPES)}, got '{dtype_name}'")
    steps = deterministic_transforms(preprocessing, with_label=True)
    seg = preprocessing["task"] == "segmentation"
    if seg:
        keys = ["image", "label"]
        if data_cfg.get("crop_foreground", True):
            steps.append(mt.CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
        steps += [
            mt.EnsureTyped(keys=keys, track_meta=False),
            mt.SpatialPadd(keys=keys, spatial_size=roi),
            # Foreground/background voxel indices once, in the cached part: the random
            # crop then draws centres without scanning the volume every step.
            mt.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
            CompactIndicesd(keys=["label_fg_indices", "label_bg_indices"]),
            mt.EnsureTyped(keys="label", dtype=torch.uint8, track_meta=False),
            mt.EnsureTyped(keys="image", dtype=IMAGE_DTYPES[dtype_name], track_meta=False),
            mt.RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=roi, pos=float(data_cfg["pos_neg_ratio"]), neg=1.0,
                num_samples=int(data_cfg["samples_per_volume"]), fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),  # (it pops the index keys from its shallow copy: patches do not carry them)
            mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
        ]
    else:
        keys = ["image"]
        steps += [mt.EnsureTyped(keys=keys, dtype=IMAGE_DTYPES[dtype_name], track_meta=False),
                  mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)]
    steps += _augment(aug, keys, seg)
    return mt.Compose(steps)


def pipeline_hash(preprocessing: Mapping[str, Any], data_cfg: Mapping[str, Any], extra: Sequence[str] = ()) -> str:
    """A short hash of everything the cached (deterministic) part depends on.

    The disk cache lives under a folder named by it, so a changed spacing, window,
    label mapping or MONAI version never reads items cached by another pipeline
    (``extra``: e.g. the catalog hash; each item's own file identity is in its
    cache key, :func:`imaging.data.datasets.item_identity`).
    """
    payload = {
        "preprocessing": preprocessing,
        "crop_foreground": bool(data_cfg.get("crop_foreground", True)),
        "image_dtype": str(data_cfg.get("image_dtype", "float32")),
        "cache_format": 2,  # uint8 labels, compact indices
        "monai": monai.__version__,
        "extra": list(extra),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
