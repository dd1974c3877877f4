"""The review overlay: axial slices of a volume with its label mask drawn over them (PNG).

Drawn for every inference series (``overlay.png``, in the writer processes) and for the
study previews of :mod:`imaging.selection.report`; it imports nothing of imaging but the
palette and the atomic writes, so both may call it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from imaging.fsutil import atomic_path


def _display_window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return window
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


PANEL_PX = 224  # the longer side of each slice panel in the montage
_ALPHA = 0.45  # mask opacity over the image


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float32)


def overlay_panels(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, names: Mapping[int, str],
                   window: tuple[float, float] | None = None,
                   n_slices: int = 6) -> tuple[list[int], list[np.ndarray], list[str]]:
    """The montage's slices as (rows, cols, 3) uint8 RGB arrays, radiological view, one per chosen k.

    The volume is first turned to RAS so the display does not depend on the source
    orientation; a panel's rows run anterior (top) to posterior, its columns the
    patient's right (left side) to left; pixels are square in millimetres.
    Slices are spread over the mask's extent (over the whole volume when empty).

    Returns:
        (the RAS slice indices, the panels, the names of the labels present)
    """
    import nibabel as nib

    from imaging.palette import label_colour

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(labels, ornt)
    # apply_orientation puts input axis argsort(ornt[:, 0])[j] at output axis j
    voxel = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    zooms = voxel[np.argsort(ornt[:, 0])]
    zs = np.nonzero(lab.any(axis=(0, 1)))[0]
    lo_z, hi_z = (int(zs.min()), int(zs.max())) if len(zs) else (0, lab.shape[2] - 1)
    ks = [int(k) for k in np.unique(np.linspace(lo_z, hi_z, num=min(n_slices, hi_z - lo_z + 1)).round().astype(int))]
    vmin, vmax = _display_window(img, window)
    n_lab = int(max(names, default=0)) + 1
    lut = np.zeros((max(n_lab, int(lab.max(initial=0)) + 1), 3), dtype=np.float32)
    for v in range(1, len(lut)):
        lut[v] = _rgb(label_colour(v))
    # panel size: the longer side PANEL_PX, the other in proportion to millimetres
    width_mm, height_mm = img.shape[0] * zooms[0], img.shape[1] * zooms[1]
    scale = PANEL_PX / max(width_mm, height_mm, 1e-6)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    rows = (np.arange(size[1]) * img.shape[1] / size[1]).astype(int)  # nearest voxel of each panel pixel
    cols = (np.arange(size[0]) * img.shape[0] / size[0]).astype(int)
    panels = []
    for k in ks:
        # RAS slice (x, y) -> rows = y reversed (anterior up), columns = x reversed (patient right on the left)
        grey = np.nan_to_num(img[:, :, k].T[::-1, ::-1][np.ix_(rows, cols)].astype(np.float32))
        grey = np.clip((grey - vmin) / max(vmax - vmin, 1e-6), 0.0, 1.0) * 255.0
        lk = lab[:, :, k].T[::-1, ::-1][np.ix_(rows, cols)].astype(np.intp)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        on = lk > 0
        rgb[on] = (1 - _ALPHA) * rgb[on] + _ALPHA * lut[lk[on]]
        panels.append(np.rint(rgb).astype(np.uint8))
    present = [names[v] for v in sorted(names) if v != 0 and (lab == v).any()]
    return ks, panels, present


def overlay_montage(path: str | os.PathLike[str], image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                    names: Mapping[int, str], window: tuple[float, float] | None = None, n_slices: int = 6,
                    title: str = "") -> None:
    """A PNG of ``n_slices`` axial slices (radiological view) with the mask drawn over the image.

    Composed with NumPy and written with Pillow, not matplotlib: a matplotlib figure of
    six panels took 0.5 s per series, as long as the model on a small CT, on the
    writer thread of every inference batch. Panels are :func:`overlay_panels`; the
    header names the labels present in their colours; R/L/A/P mark the sides.
    """
    from PIL import Image, ImageDraw

    from imaging.palette import label_colour

    ks, panels, present = overlay_panels(image, labels, affine, names, window, n_slices)
    ph, pw = panels[0].shape[:2]
    gap, head, cap = 6, 22, 16
    canvas = Image.new("RGB", (len(panels) * (pw + gap) + gap, head + cap + ph + gap), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(12), _font(10)
    draw.text((gap, 4), title, fill="black", font=font)
    x = gap + (draw.textlength(title, font=font) if title else 0) + 12
    draw.text((x, 4), "labels:", fill="black", font=font)
    x += draw.textlength("labels:", font=font) + 6
    for name in present or ["none"]:
        value = next((v for v, n in names.items() if n == name), 0)
        draw.text((x, 4), name, fill=label_colour(value) if value else "black", font=font)
        x += draw.textlength(name, font=font) + 8
    for i, (k, panel) in enumerate(zip(ks, panels, strict=True)):
        left, top = gap + i * (pw + gap), head + cap
        draw.text((left, head), f"slice {k}", fill="black", font=small)
        canvas.paste(Image.fromarray(panel, "RGB"), (left, top))
        for text, (tx, ty) in (("R", (left + 2, top + ph // 2 - 6)), ("L", (left + pw - 9, top + ph // 2 - 6)),
                               ("A", (left + pw // 2 - 3, top + 1)), ("P", (left + pw // 2 - 3, top + ph - 13))):
            draw.text((tx, ty), text, fill="yellow", font=small, stroke_width=1, stroke_fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
