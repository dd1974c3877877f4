"""Slice-stack geometry: order, spacing, tilt, and the NIfTI grid a stack is written on.

World coordinates are DICOM patient coordinates (LPS, mm). Pixel (r, c) of a
slice with ImagePositionPatient ``P``, ImageOrientationPatient ``(R, C)``
(row direction R = direction of increasing column index) and PixelSpacing
``(dr, dc)`` lies at ``P + c*dc*R + r*dr*C``. A NIfTI voxel (i, j, k) is column
i, row j of output slice k; its world position is ``affine_lps @ (i, j, k, 1)``
and the NIfTI affine is ``diag(-1, -1, 1, 1) @ affine_lps`` (LPS -> RAS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging.dicom.index_row import SliceRow, image_size

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Positions in exports are written with a few decimals: differences below these are noise.
POSITION_TOL_MM = 0.01
OFFSET_TOL_MM = 0.02
SPACING_REL_TOL = 0.01


# Cumulative check: no slice may sit further than this fraction of the spacing off a regular grid.
CUMULATIVE_REL_TOL = 0.1
# Two positions define a normal spacing; one does not (a lone slice is no volume).
MIN_POSITIONS = 2


class PlanError(ValueError):
    """A stack that cannot be written correctly under the configured policy."""


@dataclass
class Slice:
    """One 2D image: a single-frame file or one frame of a multi-frame file."""

    path: str
    frame: int  # 0-based frame index in the file
    ipp: tuple[float, float, float]
    iop: tuple[float, ...]
    spacing: tuple[float, float]  # (row spacing, column spacing) as in PixelSpacing
    t: dict[str, Any]
    slope: float
    intercept: float
    sop_uid: str
    row: SliceRow  # the file's index row (pixel location, bits, transfer syntax)


@dataclass
class Grid:
    """Where the slices of one stack are and where the output voxels will be."""

    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    dx: float  # mm between columns (PixelSpacing[1])
    dy: float  # mm between rows (PixelSpacing[0])
    nx: int  # output columns (more than the source's when a tilted field of view is covered)
    ny: int  # output rows
    origin: np.ndarray  # LPS position of voxel (0, 0, 0)
    src_d: np.ndarray  # normal coordinate of each source slice (sorted)
    offsets: np.ndarray  # (n, 2) in-plane offset (mm along row_dir, col_dir) of each source slice
    dz: float
    out_d: np.ndarray  # normal coordinate of each output slice
    tilt_deg: float = 0.0
    uneven: bool = False
    # (kept, dropped) slices: dropped only once volume.py has found their pixel values identical
    duplicates: list[tuple[Any, Any]] = field(default_factory=list)
    # Output voxel (i, j) of a slice is pixel (j + lattice[1], i + lattice[0]) of the first slice's plane.
    lattice: tuple[int, int] = (0, 0)

    @property
    def shifted(self) -> bool:
        return bool(np.abs(self.offsets).max() > OFFSET_TOL_MM)

    @property
    def resampled(self) -> bool:
        return self.shifted or len(self.out_d) != len(self.src_d) or bool(
            np.abs(self.out_d - self.src_d).max() > POSITION_TOL_MM
        )

    @property
    def affine_lps(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, 0] = self.row_dir * self.dx
        a[:3, 1] = self.col_dir * self.dy
        a[:3, 2] = self.normal * self.dz
        a[:3, 3] = self.origin
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nx, self.ny, len(self.out_d))


def slice_normal(iop: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, unit normal) from ImageOrientationPatient."""
    v = np.asarray(iop, dtype=float)
    r, c = v[:3] / np.linalg.norm(v[:3]), v[3:] / np.linalg.norm(v[3:])
    n = np.cross(r, c)
    return r, c, n / np.linalg.norm(n)


def plan_grid(
    stacks: list[list[Slice]], *, tilt: str = "resample", uneven: str = "refuse"
) -> tuple[Grid, list[str], list[list[Slice]]]:
    """Order the slices of each timepoint along the normal and plan the output grid.

    Args:
        stacks: ``stacks[t]`` are the slices of timepoint t (same positions in every t).
        tilt: ``resample`` or ``refuse`` slices whose positions drift in-plane (gantry tilt).
        uneven: ``refuse`` (default) or ``resample`` (interpolate) uneven or missing slices.
            A planned variable spacing (:func:`planned_runs`) is equalized whatever ``uneven``
            says, as dcm2niix does: it is how the scanner was told to acquire, not a fault
            (``keep`` cuts such stacks with :func:`native_runs` before they reach this).

    Returns:
        The grid, remarks for the catalog, and the slices ordered as ``[t][k]``.

    Raises:
        PlanError: refused by policy, or fewer than :data:`MIN_POSITIONS` distinct positions.
    """
    first = stacks[0][0]
    r, c, n = slice_normal(first.iop)
    ordered: list[list[Slice]] = []
    duplicates: list[tuple[Any, Any]] = []
    for stack in stacks:
        by_d = sorted(stack, key=lambda s: (float(np.dot(s.ipp, n)), s.path, s.frame))
        kept: list[Slice] = []
        for s in by_d:
            if kept and np.linalg.norm(np.subtract(s.ipp, kept[-1].ipp)) < POSITION_TOL_MM:
                duplicates.append((kept[-1], s))
                continue
            kept.append(s)
        ordered.append(kept)
    if len({len(k) for k in ordered}) != 1:
        raise PlanError("timepoints have different numbers of slice positions (0020,0032)")
    base = ordered[0]
    if len(base) < MIN_POSITIONS:
        raise PlanError(f"only {len(base)} distinct slice position(s) (0020,0032); need {MIN_POSITIONS}")
    ipp = np.asarray([s.ipp for s in base], dtype=float)
    d = ipp @ n
    rel = ipp - ipp[0]
    offsets = np.stack([rel @ r, rel @ c], axis=1)
    remarks: list[str] = []
    if len(base) == MIN_POSITIONS:
        # Their one gap is the spacing (nothing to check it against): written, and said, so that a
        # selection rule (qc.min_slices) can leave such stacks out (GE DWI: 2 slices x 7 volumes).
        remarks.append(f"only {MIN_POSITIONS} slice positions (0020,0032): spacing from their one gap")
    tilt_deg = 0.0
    dx, dy = float(first.spacing[1]), float(first.spacing[0])
    ny, nx = image_size(first.row)
    lattice = (0, 0)
    if np.abs(offsets).max() > OFFSET_TOL_MM:
        drift = float(np.linalg.norm(offsets[-1] - offsets[0]))
        tilt_deg = round(math.degrees(math.atan2(drift, float(d[-1] - d[0]))), 2)
        if tilt == "refuse":
            raise PlanError(f"gantry tilt {tilt_deg} deg: slice positions (0020,0032) drift "
                            "off the normal of (0020,0037); refused (config tilt=refuse)")
        # Cover every slice's field of view: the output in-plane lattice is the first slice's,
        # extended by whole voxels to the union of all (shifted) slices (dcm2niix pads likewise).
        i_lo, j_lo, i_hi, j_hi = _cover(offsets[:, 0] / dx, offsets[:, 1] / dy)
        lattice = (i_lo, j_lo)
        nx, ny = nx + i_hi - i_lo, ny + j_hi - j_lo
        remarks.append(f"gantry tilt {tilt_deg} deg resampled to an orthogonal grid covering the whole "
                       f"tilted field of view ({nx}x{ny} voxels in-plane)")
    gaps = np.diff(d)
    dz, out_d, kind, remark = _spacing(d, gaps)
    is_uneven = bool(kind)
    if kind == "planned":
        remarks.append(f"{remark}: equalized to {dz:.4g} mm ({len(out_d)} slices, linear interpolation)")
    elif kind:
        if uneven == "refuse":
            raise PlanError(f"{remark} (0020,0032); refused (config uneven=refuse; "
                            "uneven=resample interpolates)")
        remarks.append(f"{remark}: interpolated to {dz:.4g} mm (config uneven=resample)")
    grid = Grid(
        row_dir=r, col_dir=c, normal=n, dx=dx, dy=dy, nx=nx, ny=ny,
        origin=ipp[0] + lattice[0] * dx * r + lattice[1] * dy * c, src_d=d, offsets=offsets,
        dz=dz, out_d=out_d, tilt_deg=tilt_deg, uneven=is_uneven, duplicates=duplicates, lattice=lattice,
    )
    return grid, remarks, ordered


def _cover(di: np.ndarray, dj: np.ndarray) -> tuple[int, int, int, int]:
    """Whole-voxel (i_lo, j_lo, i_hi, j_hi) extension that holds pixels shifted by (di, dj) voxels."""
    eps = 1e-3  # a shift a rounding error past a whole voxel does not add a column
    return (min(0, math.floor(float(di.min()) + eps)), min(0, math.floor(float(dj.min()) + eps)),
            max(0, math.ceil(float(di.max()) - eps)), max(0, math.ceil(float(dj.max()) - eps)))


def _spacing(d: np.ndarray, gaps: np.ndarray) -> tuple[float, np.ndarray, str, str]:
    """(output spacing, output normal coordinates, kind, remark) for sorted positions ``d``.

    ``kind`` is ``""`` (regular), ``planned`` (runs of regular spacing, see :func:`planned_runs`),
    ``missing`` (a regular stack with gaps of whole multiples of its spacing) or ``uneven``.
    """
    median = float(np.median(gaps))
    tol = max(POSITION_TOL_MM, SPACING_REL_TOL * median)
    if float(np.abs(gaps - median).max()) <= tol:
        # Each gap is regular; the positions must also stay on a regular grid: small per-gap
        # differences that add up (a 3 mm drift over 150 slices) are not a regular stack.
        dz = float((d[-1] - d[0]) / (len(d) - 1))
        off = float(np.abs(d - (d[0] + dz * np.arange(len(d)))).max())
        if off <= max(POSITION_TOL_MM, CUMULATIVE_REL_TOL * dz):
            return dz, d.copy(), "", ""
        remark = f"uneven slice spacing (positions up to {off:.3g} mm off a regular {dz:.4g} mm grid)"
        return dz, d[0] + dz * np.arange(len(d)), "uneven", remark
    runs = planned_runs(gaps)
    if runs is not None:
        # dcm2niix's equalized grid: the smallest gap or a little less, ending on the last slice.
        count = math.ceil((d[-1] - d[0]) / float(gaps.min()) - 1e-3)
        dz = float((d[-1] - d[0]) / count)
        plan = ", ".join(f"{n} x {g:.4g} mm" for n, g in runs)
        return dz, d[0] + dz * np.arange(count + 1), "planned", f"planned variable slice spacing ({plan})"
    g_min = float(gaps.min())
    # The smallest gap keeps every acquired slice; a tiny one is position noise, not a spacing.
    base = g_min if g_min >= 0.25 * median else median
    multiples = gaps / base
    whole = np.round(multiples)
    # Missing slices: a regular stack with a few gaps that are whole multiples of the spacing.
    # Many irregular gaps (even if multiples) are an uneven acquisition, and said so.
    if np.all(np.abs(multiples - whole) * base <= tol) and whole.min() >= 1 \
            and np.sum(whole > 1) <= max(1.0, 0.25 * len(gaps)):
        unit = gaps[whole == 1]
        dz = float(unit.mean()) if len(unit) else base
        n_missing = int((whole - 1).sum())
        remark = f"{n_missing} missing slice(s) (gap {float(gaps.max()):.4g} mm, spacing {dz:.4g} mm)"
        kind = "missing"
    else:
        dz = base
        remark = f"uneven slice spacing (gaps {g_min:.4g} to {float(gaps.max()):.4g} mm)"
        kind = "uneven"
    n_out = int(math.floor((d[-1] - d[0]) / dz + 1e-3)) + 1
    return dz, d[0] + dz * np.arange(n_out), kind, remark


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= max(POSITION_TOL_MM, SPACING_REL_TOL * max(a, b))


def _multiple(gap: float, spacing: float) -> bool:
    """``gap`` is k x ``spacing`` for a whole k >= 2: slices of a ``spacing`` run are missing there."""
    k = round(gap / spacing)
    return k >= 2 and abs(gap - k * spacing) <= max(POSITION_TOL_MM, SPACING_REL_TOL * spacing)


def _runs(gaps: np.ndarray) -> list[tuple[int, float]]:
    """Maximal runs of equal consecutive gaps: (number of gaps, their mean)."""
    runs: list[tuple[int, float]] = []
    start = 0
    for i in range(1, len(gaps) + 1):
        if i == len(gaps) or not _same(float(gaps[i]), float(gaps[start:i].mean())):
            runs.append((i - start, float(gaps[start:i].mean())))
            start = i
    return runs


def planned_runs(gaps: np.ndarray) -> list[tuple[int, float]] | None:
    """The spacing runs of a planned variable spacing, or ``None`` when the gaps are no such plan.

    Sequential head CT acquires the posterior fossa thin and the cerebrum thick: runs of
    regular spacing (at least two gaps each, at least two different spacings), joined directly
    or by one transition gap. A gap of about k x the spacing of a run beside it (k >= 2), or a
    run that is k x the spacing of the equal runs on both sides, is slices missing, not a plan;
    a stray gap between runs of one spacing, or two stray gaps in a row, are uneven.
    """
    runs = _runs(gaps)
    regular = [g for n, g in runs if n >= 2]
    if len(regular) < 2 or all(_same(g, regular[0]) for g in regular):
        return None
    for i, (n, g) in enumerate(runs):
        prev, nxt = runs[i - 1] if i else None, runs[i + 1] if i + 1 < len(runs) else None
        sides = [r for r in (prev, nxt) if r is not None and r[0] >= 2]
        if n == 1:
            stray = any(r is not None and r[0] == 1 for r in (prev, nxt))
            if stray or not sides or any(_multiple(g, s) for _, s in sides):
                return None
            if len(sides) == 2 and _same(sides[0][1], sides[1][1]):
                return None
        elif len(sides) == 2 and _same(sides[0][1], sides[1][1]) and _multiple(g, sides[0][1]):
            return None
    return runs


def native_runs(stacks: list[list[Slice]]) -> list[tuple[list[list[Slice]], str]] | None:
    """``uneven=keep``: a stack of varying spacing cut into runs of regular spacing, each written
    with its own acquired slices at their own positions (nothing interpolated), or ``None`` when the
    spacing is regular. A NIfTI volume has one slice spacing, so this is the only way to keep every
    native slice: the slice where two runs meet ends one volume and starts the next (both hold it).

    Returns:
        ``[(stacks of the run, remark)]``, in order along the slice normal.

    Raises:
        PlanError: a slice that belongs to no run of at least two equal gaps (three slices).
    """
    n = slice_normal(stacks[0][0].iop)[2]
    d = np.unique(np.round([float(np.dot(s.ipp, n)) for s in stacks[0]], 2))
    if len(d) <= MIN_POSITIONS or not _spacing(d, np.diff(d))[2]:
        return None
    pieces, covered, start = [], np.zeros(len(d), dtype=bool), 0
    for count, gap in _runs(np.diff(d)):
        if count >= 2:
            pieces.append((start, start + count, gap))
            covered[start:start + count + 1] = True
        start += count
    if not covered.all():
        stray = ", ".join(f"{v - d[0]:.4g}" for v in d[~covered][:5])
        raise PlanError(f"uneven slice spacing: slice(s) at {stray} mm from the first along the normal belong to no run of "
                        "regular spacing (0020,0032); refused (config uneven=keep keeps runs of 3 or more "
                        "equally spaced slices; uneven=resample interpolates)")
    out = []
    for i, (a, b, gap) in enumerate(pieces):
        lo, hi = d[a] - 0.01, d[b] + 0.01
        part = [[s for s in st if lo <= float(np.dot(s.ipp, n)) <= hi] for st in stacks]
        shared = " (first slice shared with the run before)" if i and pieces[i - 1][1] == a else ""
        out.append((part, f"spacing run {i + 1} of {len(pieces)}: {b - a + 1} native slices at {gap:.4g} mm{shared}, "
                          "not interpolated (config uneven=keep)"))
    return out


def sparse_grid(grid: Grid, max_divisor: int = 16) -> Grid:
    """A sparse stack's grid on the largest spacing that puts every position on a slice.

    For objects that carry frames only where there is something (a SEG omits empty
    frames), missing positions are empty slices, not interpolated data: the gaps
    between frames must be whole multiples of one spacing, the largest that fits.

    Raises:
        PlanError: no spacing down to the smallest gap / ``max_divisor`` fits every gap.
    """
    d = grid.src_d
    gaps = np.diff(d)
    for n in range(1, max_divisor + 1):
        unit = float(gaps.min()) / n
        tol = max(POSITION_TOL_MM, SPACING_REL_TOL * unit)
        if unit > 0 and np.all(np.abs(gaps - np.round(gaps / unit) * unit) <= tol):
            count = int(round((d[-1] - d[0]) / unit)) + 1
            grid.dz, grid.out_d, grid.uneven = unit, d[0] + unit * np.arange(count), False
            return grid
    raise PlanError(f"frame positions (0020,0032) with gaps {float(gaps.min()):.4g} to "
                    f"{float(gaps.max()):.4g} mm fit no common slice spacing")


def world_lps(s: Slice, r: float, c: float) -> np.ndarray:
    """World (LPS) position of pixel (row r, column c) of slice ``s``, straight from its DICOM tags."""
    row_dir, col_dir, _ = slice_normal(s.iop)
    return np.asarray(s.ipp, float) + c * s.spacing[1] * row_dir + r * s.spacing[0] * col_dir
