"""Whole-volume predictions of the first validation cases, for the reviewer's images.

Review cases carry only the series key (a keyed hash), the preprocessed image,
label and prediction arrays and the voxel spacing: nothing identifying.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imaging.engine.loops import predict_volume
from imaging.engine.metrics import voxel_spacing
from imaging.records import ReviewCase


@torch.no_grad()
def review_cases(network: torch.nn.Module, loader: Any, n: int, roi_size: list[int],
                 device: torch.device, amp: bool = False, amp_dtype: str = "float16") -> list[ReviewCase]:
    """Predict the first ``n`` cases of ``loader`` (batch size 1) with ``network``, in the run's precision."""
    network.eval()
    out: list[ReviewCase] = []
    for batch in loader:
        if len(out) >= n:
            break
        image = batch["image"].to(device)
        logits = predict_volume(network, image, roi_size, sw_batch_size=4, overlap=0.25, amp=amp,
                                amp_dtype=amp_dtype)
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        spacing = _spacing(batch["image"])
        out.append(ReviewCase(
            series_key=str(batch["series_key"][0]), image=image[0, 0].float().cpu().numpy(),
            label=torch.as_tensor(batch["label"])[0, 0].cpu().numpy().astype(np.uint8), pred=pred,
            spacing=spacing,
        ))
    return out


def _spacing(image: Any) -> tuple[float, float, float]:
    """Voxel size of the first case of a (batched) MetaTensor; 1 mm when there is no affine."""
    return voxel_spacing(image)[0]
