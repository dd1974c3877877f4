"""Predict one volume: preprocess as at training, sliding window, postprocess, invert to the source grid.

The work is split in three calls so a batch driver can run them on different
threads: :meth:`SeriesPredictor.prepare` (read + preprocess, CPU),
:meth:`SeriesPredictor.forward` (the model: sliding window, TTA, softmax),
:meth:`SeriesPredictor.invert` (MONAI ``Invertd`` of the *probabilities* back to the
ingested NIfTI grid with linear interpolation, then argmax and largest component
there: as nnU-Net does, so masks on a finer source grid are smooth, not the
blocky nearest-neighbour copy of a coarse label map).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInfererAdapt
from monai.transforms import Compose, Invertd
from scipy import ndimage

from imaging.data.nifti import load_nifti
from imaging.data.transforms import build_inference_transforms
from imaging.engine.loops import autocast

log = logging.getLogger(__name__)


@dataclass
class InferenceOptions:
    """The ``inference`` config group (see ``conf/inference/default.yaml``)."""

    overlap: float = 0.25
    mode: str = "gaussian"
    sw_batch_size: int = 4
    amp: bool = True  # CUDA only, in the model's trained dtype (its preprocessing's "precision"); False: float32
    tta_flip: bool = False
    largest_component: bool = False
    roi_size: Sequence[int] | None = None  # None: the model's training patch size
    device: str = "auto"
    threads: int | None = None  # CPU threads of the model (torch.set_num_threads); None: torch's default

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> InferenceOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in dict(cfg).items() if k in known})


@dataclass
class Prepared:
    """A preprocessed volume ready for the model, with the timings of getting it."""

    data: dict[str, Any]
    source_path: Path
    t_load: float = 0.0
    t_preprocess: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def served_precision(preprocessing: Mapping[str, Any], amp: bool, device: torch.device) -> tuple[bool, str]:
    """(autocast?, dtype) to serve a model in: the precision it was trained and validated in.

    ``inference.amp=false`` or a model trained without AMP runs in float32. A model registered
    before the precision was recorded keeps float16, as it was served then. bfloat16 on a GPU
    without it runs in float32, never float16 (a bfloat16 model's range may overflow float16).
    """
    precision = dict(preprocessing.get("precision") or {})
    dtype = str(precision.get("amp_dtype", "float16"))
    use = amp and bool(precision.get("amp", True)) and device.type == "cuda"
    if use and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        log.warning("the model was trained in bfloat16, which this GPU lacks: inference in float32")
        use = False
    return use, dtype


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SeriesPredictor:
    """Run a segmentation network over whole volumes.

    Args:
        network: the model (weights loaded); moved to ``device`` and set to eval.
        preprocessing: the dict stored with the model (``build_inference_transforms``).
        options: sliding-window and postprocessing settings.
        transforms: override the preprocessing pipeline (must load key ``image``).

    Raises:
        ValueError: the model is not a segmentation model or no ROI size is known.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Mapping[str, Any],
        options: InferenceOptions | None = None,
        transforms: Compose | None = None,
    ) -> None:
        self.options = options or InferenceOptions()
        task = str(preprocessing.get("task", "segmentation"))
        if task != "segmentation":
            raise ValueError(f"imaging infer writes masks; the model's task is '{task}', not 'segmentation'")
        roi = self.options.roi_size or preprocessing.get("roi_size")
        if not roi:
            raise ValueError("no ROI size: the model's preprocessing has no 'roi_size' and inference.roi_size is unset")
        self.roi_size = tuple(int(r) for r in roi)
        self.device = resolve_device(self.options.device)
        if self.device.type == "cpu" and self.options.threads:
            # e.g. cpus-per-task less one: the prefetch and writer threads keep a core of their own
            torch.set_num_threads(int(self.options.threads))
        self.network = network.to(self.device).eval()
        self.transforms = transforms or build_inference_transforms(preprocessing)
        steps = list(self.transforms.transforms)
        # Split "read the file" from "preprocess" only to time them separately.
        self._load, self._rest = Compose(steps[:1]), Compose(steps[1:])
        self.amp, self.amp_dtype = served_precision(preprocessing, bool(self.options.amp), self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one window size all batch long: tune the kernels once

    # -- stage 1: CPU, runs on the prefetch thread ---------------------------------
    def prepare(self, volume_path: str | os.PathLike[str]) -> Prepared:
        """Read and preprocess one NIfTI volume exactly as at training."""
        t0 = time.perf_counter()
        data = self._load({"image": str(volume_path)})
        t1 = time.perf_counter()
        data = self._rest(data)
        return Prepared(data, Path(volume_path), t1 - t0, time.perf_counter() - t1)

    # -- stage 2: the model -------------------------------------------------------
    def _window(self, image: torch.Tensor) -> torch.Tensor:
        # SlidingWindowInfererAdapt: on a CUDA OutOfMemoryError it retries with the stitching
        # buffer on the CPU (then the whole volume on the CPU) instead of failing the series.
        inferer = SlidingWindowInfererAdapt(
            roi_size=self.roi_size, sw_batch_size=int(self.options.sw_batch_size),
            overlap=float(self.options.overlap), mode=str(self.options.mode),
        )
        return inferer(image, self.network)  # type: ignore[return-value]

    @torch.no_grad()
    def forward(self, prepared: Prepared) -> torch.Tensor:
        """Class probabilities (C, X, Y, Z) float32 on the CPU, in the preprocessed grid."""
        image = torch.as_tensor(prepared.data["image"]).unsqueeze(0).to(self.device, non_blocking=True)
        image = image.as_subclass(torch.Tensor) if isinstance(image, MetaTensor) else image
        with autocast(self.device, self.amp, self.amp_dtype):
            probs = torch.softmax(self._window(image).float(), dim=1)
            if self.options.tta_flip:
                # Flip each spatial axis, predict, flip back, average the probabilities.
                for axis in (2, 3, 4):
                    flipped = self._window(torch.flip(image, dims=(axis,))).float()
                    probs += torch.flip(torch.softmax(flipped, dim=1), dims=(axis,))
                probs /= 4
        return probs[0].float().cpu()

    # -- stage 3: back to the source grid -------------------------------------------
    def invert(self, prepared: Prepared, probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Invert orientation/spacing of the probabilities onto the source NIfTI grid (linear), then argmax.

        Returns:
            (labels (i, j, k) uint8, the source NIfTI's affine).

        Raises:
            ValueError: the inverted shape does not match the source volume (names the file).
        """
        image = prepared.data["image"]
        pred = MetaTensor(probs.float(), meta=dict(image.meta), applied_operations=list(image.applied_operations))
        inverter = Invertd(keys="pred", transform=self.transforms, orig_keys="image", nearest_interp=False)
        out = inverter({"image": image, "pred": pred})["pred"]
        labels = torch.argmax(torch.as_tensor(out), dim=0).to(torch.uint8).numpy()
        if self.options.largest_component:
            labels = keep_largest_component(labels)
        src = load_nifti(prepared.source_path)
        shape = tuple(src.shape[:3])
        if labels.shape != shape:
            raise ValueError(f"{prepared.source_path}: inverted mask shape {labels.shape} != volume shape {shape}")
        return labels, np.asarray(src.affine, dtype=np.float64)

    def predict(self, volume_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
        """All three stages for one volume (tests and notebooks)."""
        prepared = self.prepare(volume_path)
        return self.invert(prepared, self.forward(prepared))


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Per label value, keep only its largest 26-connected component (others become background)."""
    out = labels.copy()
    structure = np.ones((3,) * (labels.ndim), dtype=bool)
    for value in np.unique(labels):
        if value == 0:
            continue
        comps, n = ndimage.label(labels == value, structure=structure)
        if n > 1:
            sizes = np.bincount(comps.ravel())
            sizes[0] = 0
            out[(comps != 0) & (comps != int(np.argmax(sizes)))] = 0
    return out
