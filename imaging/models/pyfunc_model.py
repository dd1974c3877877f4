"""MLflow pyfunc model *from code* for registered imaging models.

MLflow stores this file (not a pickle) with the model, and the ``imaging``
package as ``code_paths``; loading rebuilds the network from ``bundle.json``
with our factory and loads ``weights.safetensors``, so a fresh environment with
the logged requirements is enough. ``predict`` takes either

- raw NIfTI files: a path, a list of paths, or a DataFrame with a ``path``
  column; each is preprocessed exactly as at training (the stored
  preprocessing) and the label map comes back on the file's own voxel grid
  (a list of ``(i, j, k)`` uint8 arrays; segmentation models), or
- preprocessed volumes ``(N, C, X, Y, Z)``: class indices by sliding-window
  inference (segmentation) or argmax (classification).
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

        paths = _paths(model_input)
        if paths is not None:
            from imaging.engine.predict import SeriesPredictor

            predictor = SeriesPredictor(self.network, self.bundle["preprocessing"])
            return [predictor.predict(p)[0] for p in paths]
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


def _paths(model_input: Any) -> list[str] | None:
    """NIfTI paths in ``model_input`` (str, list of str, DataFrame ``path`` column), else None."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, (list, tuple)) and model_input and all(isinstance(p, str) for p in model_input):
        return list(model_input)
    columns = getattr(model_input, "columns", None)
    if columns is not None and "path" in columns:
        return [str(p) for p in model_input["path"]]
    return None


mlflow.models.set_model(ImagingModel())
