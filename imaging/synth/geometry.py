"""Slice geometry as a scanner writes it: ImageOrientationPatient, ImagePositionPatient.

The image raster is fixed to the gantry; the patient lies in it in some position.
For HFS the gantry axes coincide with the patient's LPS axes; the other positions
rotate the patient in the gantry, so the raster's row/column directions expressed in
patient coordinates change (FFS: rows run to the patient's right, ...). All
vectors here are in the DICOM patient coordinate system (LPS, mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Raster row direction (increasing column index) and column direction
# (increasing row index) in patient coordinates for an axial acquisition.
POSITION_IOP: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
    # Decubitus: the patient lies on the left (HFDL) or right (HFDR) side, i.e.
    # HFS rotated by +/-90 degrees about the cranio-caudal axis.
    "HFDL": ((0, -1, 0), (1, 0, 0)),
    "HFDR": ((0, 1, 0), (-1, 0, 0)),
    "FFDL": ((0, 1, 0), (1, 0, 0)),
    "FFDR": ((0, -1, 0), (-1, 0, 0)),
}
# The table moves the patient through the gantry: head-first positions scan head
# to feet (IPP z decreasing), feet-first ones feet to head in patient terms.
SUPERIOR = np.array([0.0, 0.0, 1.0])


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about a patient axis ``"x"``, ``"y"`` or ``"z"``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(f"rotation axis must be x, y or z, got {axis!r}")


@dataclass
class Grid:
    """The voxel grid of one series, slice by slice in acquisition order.

    Attributes:
        rows, cols: raster size.
        spacing: (row spacing, column spacing) mm, i.e. DICOM PixelSpacing.
        row_dir: direction of increasing column index (first IOP triplet).
        col_dir: direction of increasing row index (second IOP triplet).
        positions: (n, 3) ImagePositionPatient of each slice in acquisition order.
        thickness: SliceThickness in mm.
        tilt: gantry tilt in degrees (0 for none).
    """

    rows: int
    cols: int
    spacing: tuple[float, float]
    row_dir: np.ndarray
    col_dir: np.ndarray
    positions: np.ndarray
    thickness: float
    tilt: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def n_slices(self) -> int:
        return len(self.positions)

    @property
    def iop(self) -> list[float]:
        return [round(float(v), 8) for v in (*self.row_dir, *self.col_dir)]

    def ipp(self, k: int) -> list[float]:
        return [round(float(v), 6) for v in self.positions[k]]

    def slice_points(self, k: int) -> np.ndarray:
        """World (LPS mm) centres of the pixels of slice ``k``: shape (rows, cols, 3)."""
        r = np.arange(self.rows, dtype=np.float64)[:, None, None] * self.spacing[0]
        c = np.arange(self.cols, dtype=np.float64)[None, :, None] * self.spacing[1]
        return self.positions[k] + c * self.row_dir + r * self.col_dir

    def sorted_order(self) -> np.ndarray:
        """Slice indices sorted by position along the normal (the volume's k order)."""
        return np.argsort(self.positions @ self.normal, kind="stable")

    @property
    def is_uniform(self) -> bool:
        """Whether sorted slices are equally spaced (an affine describes the volume)."""
        pos = self.positions[self.sorted_order()]
        gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        return bool(len(gaps) == 0 or np.allclose(gaps, gaps[0], atol=1e-3))

    def affine_ras(self) -> np.ndarray:
        """NIfTI affine (RAS) of the volume made of the slices in :meth:`sorted_order`.

        Voxel (i, j, k) is column i, row j of the k-th slice along the normal; the
        third column is the mean step between sorted positions (shear included for
        a tilted series).
        """
        order = self.sorted_order()
        pos = self.positions[order]
        step = (pos[-1] - pos[0]) / max(len(pos) - 1, 1) if len(pos) > 1 else self.normal * self.thickness
        lps = np.eye(4)
        lps[:3, 0] = self.row_dir * self.spacing[1]
        lps[:3, 1] = self.col_dir * self.spacing[0]
        lps[:3, 2] = step
        lps[:3, 3] = pos[0]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def axial_grid(
    rows: int,
    cols: int,
    n_slices: int,
    pixel: float,
    step: float,
    center: tuple[float, float, float] = (0.0, 0.0, 0.0),
    position: str = "HFS",
    oblique: np.ndarray | None = None,
    tilt: float = 0.0,
    gaps: np.ndarray | None = None,
    thickness: float | None = None,
) -> Grid:
    """Build the grid an axial acquisition of a patient in ``position`` would have.

    Args:
        rows, cols, n_slices: raster and slice count.
        pixel: square pixel size in mm.
        step: table increment (slice spacing) in mm.
        center: world centre of the field of view.
        position: PatientPosition (HFS, FFS, HFP, FFP, HFDL, HFDR, FFDL, FFDR).
        oblique: optional 3x3 rotation applied to the raster axes (oblique slices).
        tilt: gantry tilt in degrees about the patient's left-right raster axis;
            slices stay at table positions, so IPP advances along the table while
            the slice normal is tilted: the volume is sheared.
        gaps: optional (n_slices - 1,) spacings overriding ``step`` (uneven gaps).
        thickness: SliceThickness (defaults to ``step``).

    Raises:
        ValueError: unknown ``position``.
    """
    if position not in POSITION_IOP:
        raise ValueError(f"PatientPosition {position!r} not one of {sorted(POSITION_IOP)}")
    row_dir, col_dir = (np.asarray(v, dtype=np.float64) for v in POSITION_IOP[position])
    if tilt:
        # Tilting the gantry rotates the raster about its row axis.
        tilt_rot = _axis_angle(row_dir, tilt)
        col_dir = tilt_rot @ col_dir
    if oblique is not None:
        row_dir, col_dir = oblique @ row_dir, oblique @ col_dir
    normal = np.cross(row_dir, col_dir)
    head_first = position.startswith("HF")
    # Table direction: head-first scans move towards the feet (IPP z decreasing).
    table = -SUPERIOR if head_first else SUPERIOR
    advance = table if tilt else normal * np.sign(normal @ table if abs(normal @ table) > 1e-6 else 1.0)
    offsets = np.concatenate([[0.0], np.cumsum(gaps if gaps is not None else np.full(n_slices - 1, step))])
    offsets -= offsets[-1] / 2.0
    half = (cols - 1) / 2.0 * pixel * row_dir + (rows - 1) / 2.0 * pixel * col_dir
    positions = np.asarray(center, dtype=np.float64) - half + offsets[:, None] * advance
    return Grid(rows, cols, (pixel, pixel), row_dir, col_dir, positions,
                float(thickness if thickness is not None else step), tilt)


def _axis_angle(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about unit ``axis``."""
    t = np.deg2rad(degrees)
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx
