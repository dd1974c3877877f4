"""Records that cross layers, defined once (a leaf module: it imports nothing of ours).

The engine produces them, tracking and review read them; neither may import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ReviewCase:
    """One validation case for the reviewer's images: preprocessed image, label and prediction."""

    series_key: str
    image: np.ndarray   # (X, Y, Z) in RAS after preprocessing
    label: np.ndarray   # (X, Y, Z) class indices
    pred: np.ndarray    # (X, Y, Z) class indices
    spacing: tuple[float, float, float]
