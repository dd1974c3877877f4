"""An abdomen phantom defined in patient (LPS, mm) coordinates.

The phantom is a function of world position, not a voxel array: every series
(any patient position, oblique, tilted, any spacing) samples the same anatomy at
its own voxel centres, so the truth of any geometry is exact and ingest can be
checked by where things land in the world.

Tissue classes are mapped to CT Hounsfield units or MR signal by lookup tables;
labels are 1 = liver, 2 = spleen, 3 = kidney (both kidneys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}

# Tissue classes (index into the intensity tables).
AIR, FAT, SOFT, LIVER, SPLEEN, KIDNEY, BONE, VESSEL, VISCERAL, BOWEL = range(10)
TISSUE_TO_LABEL = np.array([0, 0, 0, 1, 2, 3, 0, 0, 0, 0], dtype=np.uint8)

# Hounsfield units per tissue class (portal-venous phase: kidneys enhanced).
# Muscle wall 40 HU; the organs sit in visceral (mesenteric) fat with bowel loops.
CT_HU = np.array([-1000.0, -100.0, 40.0, 60.0, 45.0, 150.0, 450.0, 160.0, -80.0, 20.0])
# MR signal (arbitrary units, 12-bit) per tissue class.
MR_T1 = np.array([0.0, 1100.0, 420.0, 650.0, 380.0, 480.0, 700.0, 120.0, 950.0, 300.0])
MR_T2 = np.array([0.0, 850.0, 260.0, 180.0, 560.0, 720.0, 300.0, 60.0, 700.0, 480.0])
INTENSITY = {"CT": CT_HU, "T1": MR_T1, "T2": MR_T2}
NOISE_SIGMA = {"CT": 12.0, "T1": 25.0, "T2": 25.0}


@dataclass(frozen=True)
class Blob:
    """An ellipsoid with a smooth random boundary perturbation.

    Attributes:
        center: (3,) mm, LPS.
        radii: (3,) semi-axes in mm (before rotation).
        rotation: (3, 3) rotation matrix (columns: the blob's axes in LPS).
        directions: (K, 3) unit vectors of the perturbation harmonics.
        freqs, phases: (K,) frequency (cycles over the unit sphere) and phase.
        amplitude: relative radius perturbation.
        tissue: tissue class filled in.
    """

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    directions: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray
    amplitude: float
    tissue: int

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of ``points`` (N, 3) inside the perturbed ellipsoid."""
        out = np.zeros(len(points), dtype=bool)
        # Cheap bounding-box test first: the harmonics are costly and most points are far.
        reach = float(self.radii.max()) * (1.0 + self.amplitude)
        near = np.flatnonzero((np.abs(points - self.center) < reach).all(axis=1))
        if len(near):
            out[near] = self._contains(points[near])
        return out

    def _contains(self, points: np.ndarray) -> np.ndarray:
        q = ((points - self.center) @ self.rotation) / self.radii
        r = np.sqrt(np.einsum("ij,ij->i", q, q))
        u = q / np.maximum(r, 1e-9)[:, None]
        bump = np.cos(np.pi * (u @ self.directions.T) * self.freqs + self.phases)
        limit = 1.0 + self.amplitude * bump.mean(axis=1)
        return r < limit


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _blob(rng: np.random.Generator, center: list[float], radii: list[float], tissue: int,
          jitter: float = 6.0, scale: float = 1.0, amplitude: float = 0.18) -> Blob:
    k = 5
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return Blob(
        center=np.asarray(center, float) * scale + rng.uniform(-jitter, jitter, size=3),
        radii=np.asarray(radii, float) * scale * rng.uniform(0.88, 1.12, size=3),
        rotation=_rotation(rng, 10.0),
        directions=dirs,
        freqs=rng.uniform(1.5, 3.5, size=k),
        phases=rng.uniform(0, 2 * np.pi, size=k),
        amplitude=amplitude,
        tissue=tissue,
    )


@dataclass(frozen=True)
class Phantom:
    """One subject's anatomy.

    Attributes:
        body_axes: (a, b) semi-axes of the body ellipse (LR, AP) in mm.
        fat: subcutaneous fat thickness in mm.
        wall: abdominal muscle wall thickness in mm (inside the fat).
        center: (x, y) of the body axis in mm (z is the cranio-caudal axis).
        z_range: (zmin, zmax) extent of the body in mm.
        organs: blobs painted in order (later wins).
        spine: (x, y, radius) of the vertebral column.
        aorta: (x, y, radius).
    """

    body_axes: tuple[float, float]
    fat: float
    wall: float
    center: tuple[float, float]
    z_range: tuple[float, float]
    organs: tuple[Blob, ...]
    spine: tuple[float, float, float]
    aorta: tuple[float, float, float]

    def tissue(self, points: np.ndarray) -> np.ndarray:
        """Tissue class (uint8) at ``points`` (..., 3) in LPS mm."""
        shape = points.shape[:-1]
        p = points.reshape(-1, 3)
        x, y, z = p[:, 0] - self.center[0], p[:, 1] - self.center[1], p[:, 2]
        a, b = self.body_axes
        out = np.full(len(p), AIR, dtype=np.uint8)
        in_z = (z > self.z_range[0]) & (z < self.z_range[1])
        out[in_z & ((x / a) ** 2 + (y / b) ** 2 < 1.0)] = FAT
        inner = in_z & ((x / (a - self.fat)) ** 2 + (y / (b - self.fat)) ** 2 < 1.0)
        out[inner] = SOFT
        wa, wb = a - self.fat - self.wall, b - self.fat - self.wall
        out[inner & ((x / wa) ** 2 + (y / wb) ** 2 < 1.0)] = VISCERAL
        idx = np.flatnonzero(inner)
        sub = p[idx]
        for organ in self.organs:
            out[idx[organ.contains(sub)]] = organ.tissue
        sx, sy, sr = self.spine
        out[inner & ((p[:, 0] - sx) ** 2 + (p[:, 1] - sy) ** 2 < sr**2)] = BONE
        ax, ay, ar = self.aorta
        out[inner & ((p[:, 0] - ax) ** 2 + (p[:, 1] - ay) ** 2 < ar**2)] = VESSEL
        return out.reshape(shape)


def make_phantom(rng: np.random.Generator) -> Phantom:
    """Draw one subject's anatomy (size, organ shapes and positions vary per subject)."""
    scale = float(rng.uniform(0.9, 1.08))
    a, b = 160.0 * scale, 115.0 * scale
    cx, cy = rng.uniform(-8, 8), rng.uniform(-6, 6)
    c = np.array([cx, cy, 0.0])
    bowel = tuple(
        _blob(rng, [rng.uniform(-70, 70), rng.uniform(-70, -10), rng.uniform(-80, 60)],
              [rng.uniform(14, 24)] * 3, BOWEL, jitter=0.0, scale=scale, amplitude=0.2)
        for _ in range(8)
    )
    organs = bowel + (
        _blob(rng, [-62, -8, 28], [78, 62, 62], LIVER, scale=scale),
        _blob(rng, [84, 26, 42], [30, 44, 42], SPLEEN, scale=scale),
        _blob(rng, [-62, 56, -36], [27, 27, 48], KIDNEY, scale=scale, amplitude=0.1),
        _blob(rng, [62, 60, -34], [27, 27, 48], KIDNEY, scale=scale, amplitude=0.1),
    )
    organs = tuple(
        Blob(o.center + c, o.radii, o.rotation, o.directions, o.freqs, o.phases, o.amplitude, o.tissue)
        for o in organs
    )
    return Phantom(
        body_axes=(a, b),
        fat=float(rng.uniform(12, 24)),
        wall=float(rng.uniform(8, 12)),
        center=(float(cx), float(cy)),
        z_range=(-400.0, 400.0),
        organs=organs,
        spine=(cx, cy + 70 * scale, 17 * scale),
        aorta=(cx + 16, cy + 40 * scale, 11 * scale),
    )


def intensity(tissue: np.ndarray, contrast: str, rng: np.random.Generator | None,
              table: np.ndarray | None = None) -> np.ndarray:
    """Map tissue classes to CT HU or MR signal (float32), with noise if ``rng`` is given.

    ``table`` overrides the contrast's intensity per tissue class (contrast phases).
    """
    img = (INTENSITY[contrast] if table is None else table)[tissue].astype(np.float32)
    if rng is None:
        return img
    sigma = NOISE_SIGMA[contrast]
    if contrast == "CT":
        return img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    # MR magnitude noise is Rician: |signal + complex gaussian|.
    re = img + rng.normal(0.0, sigma, size=img.shape)
    im = rng.normal(0.0, sigma, size=img.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def labels(tissue: np.ndarray) -> np.ndarray:
    """Label map (uint8: 1 liver, 2 spleen, 3 kidney) from tissue classes."""
    return TISSUE_TO_LABEL[tissue]
