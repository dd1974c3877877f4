"""The one label palette: review images (training), overlays (inference report) and
notebooks colour label value ``v`` alike, so liver is the same colour everywhere.

Dependency-free on purpose (every layer may import it); matplotlib is imported
only by :func:`label_cmap`.
"""

from __future__ import annotations

from typing import Any

# Tableau's qualitative colours without grey (grey is the image); value v >= 1 -> [(v - 1) % 9].
LABEL_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                 "#17becf"]


def label_colour(value: int) -> str:
    """The colour of label value ``value`` (>= 1; 0 is background and drawn transparent)."""
    return LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]


def label_cmap(n_labels: int) -> Any:
    """A ListedColormap: value 0 transparent, 1..n_labels :func:`label_colour`."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(["none"] + [label_colour(v) for v in range(1, n_labels + 1)])
