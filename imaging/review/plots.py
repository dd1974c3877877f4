"""Figures for reviewing volumes: orthogonal views with label overlays, intensity histograms.

Conventions (so every figure reads the same way):

- Images in grey, windowed: CT in Hounsfield units with a named window
  (soft tissue W400/L40 by default), MR between the 1st and 99.5th percentile of
  the body; a colour bar gives the unit.
- Labels in a qualitative palette at alpha 0.4, one legend entry per label;
  a reference drawn as contours in the same colours.
- Radiological convention: patient right on the viewer's left (axial, coronal),
  anterior on the left (sagittal); axes in millimetres (world RAS).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from imaging.palette import LABEL_COLOURS as LABEL_COLOURS  # re-exported for notebooks
from imaging.palette import label_cmap as label_cmap
from imaging.review.dataset import Volume, iter_volumes

CT_WINDOWS = {"soft_tissue": (40.0, 400.0), "liver": (60.0, 160.0), "lung": (-600.0, 1500.0),
              "bone": (400.0, 1800.0)}  # name: (level, width) in HU
HU_RANGE = (-1024.0, 1600.0)


def ct_window(name: str = "soft_tissue") -> tuple[float, float]:
    """(min, max) HU of a named CT window.

    Raises:
        ValueError: unknown window (names it and lists the known ones).
    """
    if name not in CT_WINDOWS:
        raise ValueError(f"CT window '{name}' is not one of {sorted(CT_WINDOWS)}")
    level, width = CT_WINDOWS[name]
    return level - width / 2, level + width / 2


def display_window(image: np.ndarray, modality: str, window: str | tuple[float, float] | None = None
                   ) -> tuple[float, float]:
    """Grey-level range: a CT window in HU, else the 1st-99.5th percentiles of the non-background voxels."""
    if isinstance(window, tuple):
        return float(window[0]), float(window[1])
    if modality.upper() == "CT":
        return ct_window(window or "soft_tissue")
    flat = np.asarray(image, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    # Background (air, zero-filled) would pull the window down: keep voxels above 10 % of the range.
    floor, top = float(flat.min()), float(np.percentile(flat, 99))
    values = flat[flat > floor + 0.1 * (top - floor)]
    if values.size == 0:
        values = flat
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def intensity_unit(modality: str) -> str:
    return "HU" if modality.upper() == "CT" else "signal intensity (a.u.)"


def _centre(label: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if label is not None and label.any():
        return tuple(int(v) for v in np.argwhere(label > 0).mean(0).round())  # type: ignore[return-value]
    return tuple(s // 2 for s in shape[:3])  # type: ignore[return-value]


# plane name, the two displayed axes (horizontal, vertical), axis labels, flip horizontal?
_PLANES = [("axial", (0, 1), "x (mm)  patient right <-> left", "y (mm)  posterior -> anterior", True),
           ("coronal", (0, 2), "x (mm)  patient right <-> left", "z (mm)  inferior -> superior", True),
           ("sagittal", (1, 2), "y (mm)  anterior <-> posterior", "z (mm)  inferior -> superior", True)]


def _slice(vol: np.ndarray, plane: int, c: tuple[int, int, int]) -> np.ndarray:
    # Transposed so the first displayed axis runs horizontally (imshow rows are vertical).
    return [vol[:, :, c[2]], vol[:, c[1], :], vol[c[0], :, :]][plane].T


def _extent(shape: tuple[int, ...], spacing: Sequence[float], origin: Sequence[float],
            axes: tuple[int, int]) -> tuple[float, float, float, float]:
    h, v = axes
    return (origin[h] - spacing[h] / 2, origin[h] + (shape[h] - 0.5) * spacing[h],
            origin[v] - spacing[v] / 2, origin[v] + (shape[v] - 0.5) * spacing[v])


def orthoviews(volume: Volume | np.ndarray, label: np.ndarray | None = None, *,
               spacing: Sequence[float] = (1.0, 1.0, 1.0), origin: Sequence[float] = (0.0, 0.0, 0.0),
               names: Mapping[int, str] | None = None, modality: str = "CT",
               window: str | tuple[float, float] | None = None, reference: np.ndarray | None = None,
               title: str = "", centre: tuple[int, int, int] | None = None) -> Figure:
    """Axial, coronal and sagittal planes through the labelled region, label overlaid.

    Args:
        volume: a :class:`~imaging.review.dataset.Volume` (spacing, origin, modality, label
            taken from it) or an (x, y, z) RAS array.
        label: label map on the same grid (overrides the Volume's).
        names: label value -> name for the legend (background 0 ignored).
        window: CT window name or (min, max); default soft tissue for CT, percentiles for MR.
        reference: a second label map drawn as contours (e.g. ground truth under a prediction).
        centre: voxel the three planes go through (default: centre of the labels, else of the volume).

    Raises:
        ValueError: a label map is not on the image grid (gives both shapes).
    """
    if isinstance(volume, Volume):
        image, spacing, origin, modality = volume.image, volume.spacing, volume.origin, volume.modality or modality
        label = label if label is not None else volume.label
        title = title or f"series {volume.series_key[:16]}"
    else:
        image = np.asarray(volume)
    for name, lab in (("label", label), ("reference", reference)):
        if lab is not None and lab.shape[:3] != image.shape[:3]:
            raise ValueError(f"{name} shape {lab.shape} differs from the image shape {image.shape}")
    names = dict(names or {})
    present = sorted({int(v) for lab in (label, reference) if lab is not None for v in np.unique(lab) if v > 0})
    n_lab = max([*present, *names.keys(), 1])
    cmap = label_cmap(n_lab)
    vmin, vmax = display_window(image, modality, window)
    c = centre or _centre(label if label is not None else reference, image.shape)
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    shown = None
    for plane, (ax, (pname, hv, xlab, ylab, flip)) in enumerate(zip(axes, _PLANES, strict=True)):
        ext = _extent(image.shape, spacing, origin, hv)
        shown = ax.imshow(_slice(image, plane, c), cmap="gray", vmin=vmin, vmax=vmax, origin="lower", extent=ext,
                          interpolation="nearest")
        if label is not None:
            ax.imshow(np.ma.masked_equal(_slice(label, plane, c), 0), cmap=cmap, vmin=0, vmax=n_lab, alpha=0.4,
                      origin="lower", extent=ext, interpolation="nearest")
        if reference is not None:
            ref = _slice(reference, plane, c)
            for v in present:
                if (ref == v).any():
                    ax.contour((ref == v).astype(float), levels=[0.5], colors=[cmap(v)], linewidths=1.2,
                               origin="lower", extent=ext)
        if flip:
            ax.invert_xaxis()  # radiological: patient right (axial/coronal) or anterior (sagittal) on the left
        ax.set_title(f"{pname} (slice {c[2 - plane]})")
        ax.set_xlabel(xlab)
        ax.set_ylabel(ylab)
        ax.set_aspect("equal")
    assert shown is not None  # three planes were drawn
    cbar = fig.colorbar(shown, ax=list(axes), shrink=0.8, label=intensity_unit(modality))
    cbar.ax.set_title(f"[{vmin:g}, {vmax:g}]", fontsize=7)
    handles = [Patch(facecolor=cmap(v), alpha=0.6, label=names.get(v, f"label {v}")) for v in present]
    if reference is not None:
        handles.append(Patch(facecolor="none", edgecolor="black", label="reference: contour"))
    if handles:
        axes[0].legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.8)
    fig.suptitle(title or "orthogonal views")
    return fig


def intensity_histogram(voxels: np.ndarray, modality: str, bins: int = 120,
                        value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and the fraction of voxels per bin (CT over a fixed HU range, so lines compare)."""
    flat = np.asarray(voxels, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if value_range is None:
        if modality.upper() == "CT":
            value_range = HU_RANGE
        else:
            lo, hi = np.percentile(flat, [0.5, 99.5]) if flat.size else (0.0, 1.0)
            value_range = (float(lo), float(hi if hi > lo else lo + 1.0))
    counts, edges = np.histogram(flat, bins=bins, range=value_range)
    return edges, counts / max(flat.size, 1)


def _hist_axes(ax: Axes, modality: str, n: int) -> None:
    ax.set_title(f"{modality}: {n} volume(s)")
    ax.set_xlabel(intensity_unit(modality))
    ax.set_ylabel("fraction of voxels (log)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)


def intensity_histograms(catalog: pd.DataFrame, dataset_dir: str | os.PathLike[str], *,
                         max_per_modality: int = 6, bins: int = 120) -> Figure:
    """One panel per modality, one line per volume (first ``max_per_modality`` ok volumes).

    CT shares a fixed HU axis with the soft-tissue window shaded, so scanners
    and reconstructions compare; MR (no absolute unit) uses each volume's range.

    Raises:
        ValueError: the catalog has no ok volume.
    """
    by_modality: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for modality, key, voxels in iter_volumes(dataset_dir, catalog, max_per_modality):
        edges, frac = intensity_histogram(voxels, modality, bins)
        by_modality.setdefault(modality, []).append((key, edges, frac))
    if not by_modality:
        raise ValueError(f"no ok volume in the catalog of '{dataset_dir}': nothing to histogram")
    fig = Figure(figsize=(6.5 * len(by_modality), 4.2), layout="constrained")
    axes = fig.subplots(1, len(by_modality), squeeze=False)[0]
    for ax, (modality, lines) in zip(axes, sorted(by_modality.items()), strict=True):
        for key, edges, frac in lines:
            ax.stairs(np.where(frac > 0, frac, np.nan), edges, label=key[:10], linewidth=1.2)
        if modality.upper() == "CT":
            lo, hi = ct_window()
            ax.axvspan(lo, hi, color="grey", alpha=0.15, label="soft-tissue window")
        _hist_axes(ax, modality, len(lines))
        ax.legend(fontsize=7, title="series", title_fontsize=7)
    fig.suptitle("Intensity distributions per modality")
    return fig


def status_bars(counts: pd.DataFrame) -> Figure:
    """Stacked bars of series per modality by status (from :func:`imaging.review.dataset.status_counts`)."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    colours = {"ok": "#2ca02c", "skipped": "#7f7f7f", "error": "#d62728"}
    bottom = np.zeros(len(counts))
    x = np.arange(len(counts))
    for status in ("ok", "skipped", "error"):
        values = counts[status].to_numpy() if status in counts else np.zeros(len(counts))
        ax.bar(x, values, bottom=bottom, color=colours[status], label=status)
        bottom += values
    ax.set_xticks(x, [str(m) for m in counts.index])
    ax.set_xlabel("modality")
    ax.set_ylabel("series (count)")
    ax.set_title("Ingest outcome per modality")
    ax.legend(title="status")
    return fig
