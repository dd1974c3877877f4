"""MLflow pyfunc model *from code* for registered imaging models.

MLflow stores this file (not a pickle) with the model; loading it rebuilds the
network from ``bundle.json`` with our factory and loads ``weights.safetensors``.
``predict`` takes preprocessed volumes ``(N, C, X, Y, Z)`` and returns class
indices by sliding-window inference (segmentation) or argmax (classification).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ImagingModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from imaging.tracking.registry import read_bundle_dir

        self.network, self.bundle = read_bundle_dir(Path(context.artifacts["bundle"]).parent)

    # No type hints on predict: MLflow would derive a (wrong) schema from them; the
    # logged signature describes the tensors.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch
        from monai.inferers import sliding_window_inference

        if isinstance(model_input, dict):  # a named tensor signature hands us {"image": array}
            model_input = model_input["image"]
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            if self.bundle["task"] == "segmentation":
                logits = sliding_window_inference(x, self.bundle["preprocessing"]["roi_size"], 4, self.network,
                                                  overlap=0.25, mode="gaussian")
            else:
                logits = self.network(x)
        return logits.argmax(1).numpy().astype(np.uint8)


mlflow.models.set_model(ImagingModel())
