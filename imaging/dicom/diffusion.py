"""b-values and gradient directions of a diffusion volume, as FSL ``.bval`` / ``.bvec`` files.

Convention (FSL, as dcm2niix writes it): one b-value per volume; three rows of
gradient components in the image's voxel axes (i, j, k of the NIfTI), with the
first component negated when the affine's determinant is positive (FSL treats
voxel space as radiological). Unweighted volumes (b = 0 or no direction) get
``0 0 0``. Directions are normalised.

Where the DICOM direction comes from (see :mod:`imaging.dicom.dims`):
(0018,9089), Siemens CSA ``DiffusionGradientDirection`` and Philips (2005,10B0-B2)
are patient (LPS) coordinates; GE's (0019,10BB-BD) are relative to the image,
converted here as dcm2niix's ``geCorrectBvecs`` does (validated for axial stacks there too).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imaging.fsutil import atomic_write_text

if TYPE_CHECKING:
    from imaging.dicom.series import Slice, VolumePlan


def gradient_lps(s: Slice) -> np.ndarray | None:
    """Unit gradient direction of slice ``s`` in patient (LPS) coordinates, zeros when unweighted."""
    t = s.t
    b = t.get("b")
    vec = t.get("bvec")
    if vec is None and t.get("bvec_ge") is not None:
        vec = _ge_to_lps(np.asarray(t["bvec_ge"], float), s.iop, str(t.get("pe") or "COL"))
    if vec is None:
        return None
    v = np.asarray(vec, float)
    n = float(np.linalg.norm(v))
    if not b or n < 1e-6:
        return np.zeros(3)
    return v / n


def _ge_to_lps(g: np.ndarray, iop: Any, pe: str) -> np.ndarray:
    """GE (0019,10BB/BC/BD), relative to the image's phase/frequency/slice axes, in LPS.

    Follows dcm2niix's ``geCorrectBvecs`` (after dicm2nii): with row phase encoding
    x and y swap (and the new y changes sign); then the components along the
    dominant slice axis' flip pattern change sign (axial z; sagittal x, y;
    coronal y, z); y changes sign for dcm2niix's flipped rows; and the whole
    vector changes sign. The result is along dcm2niix's voxel axes
    (row direction, minus column direction, slice normal; determinant < 0, no FSL flip),
    taken here back to patient coordinates.
    """
    r = np.asarray(iop[:3], float)
    c = np.asarray(iop[3:], float)
    n = np.cross(r, c)
    v = np.array(g, float)
    if pe.startswith("ROW"):
        v = np.array([v[1], -v[0], v[2]])
    flip = {0: (1, 1, 0), 1: (0, 1, 1), 2: (0, 0, 1)}[int(np.argmax(np.abs(n)))]
    v = np.where(np.asarray(flip) == 1, -v, v)
    v[1] = -v[1]
    v = -v
    return v[0] * r - v[1] * c + v[2] * n


def diffusion_table(vol: VolumePlan) -> tuple[list[float], np.ndarray] | None:
    """(b-values, LPS unit directions (n, 3)) per timepoint, or ``None`` when not a diffusion volume."""
    if vol.t_key != "diff":
        return None
    bvals: list[float] = []
    vecs: list[np.ndarray] = []
    for stack in vol.slices:
        s = stack[0]
        b = s.t.get("b")
        g = gradient_lps(s)
        bvals.append(float(b) if isinstance(b, (int, float)) else 0.0)
        vecs.append(np.zeros(3) if g is None else g)
    table = np.asarray(vecs)
    directional = bool(np.abs(table).sum(axis=1).max(initial=0.0) > 0)
    for i, stack in enumerate(vol.slices):
        # GE writes the b=0 volumes of a DTI run with the run's b-value and no direction
        # (dcm2niix nii_saveDTI, issue 245): unweighted, b = 0.
        if "bvec_ge" in stack[0].t and directional and not np.abs(table[i]).sum():
            bvals[i] = 0.0
    return bvals, table


def fsl_bvecs(vecs_lps: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """(3, n) FSL bvecs of LPS unit directions for a NIfTI with this RAS affine."""
    m = np.asarray(affine_ras, float)[:3, :3]
    axes = m / np.linalg.norm(m, axis=0)
    ras = vecs_lps * np.array([-1.0, -1.0, 1.0])
    out = ras @ axes  # component along each voxel axis
    if np.linalg.det(m) > 0:
        out[:, 0] = -out[:, 0]
    out[np.abs(out) < 1e-7] = 0.0
    return out.T


def write_fsl(volume_path: Path, bvals: list[float], vecs_lps: np.ndarray, affine_ras: np.ndarray) -> tuple[Path, Path]:
    """Write ``<key>.bval`` and ``<key>.bvec`` beside ``<key>.nii.gz`` (atomic, dcm2niix's layout)."""
    stem = volume_path.name.removesuffix(".nii.gz")
    bval_path = volume_path.with_name(f"{stem}.bval")
    bvec_path = volume_path.with_name(f"{stem}.bvec")
    atomic_write_text(bval_path, "\t".join(f"{b:g}" for b in bvals) + "\n", fsync=False)
    rows = fsl_bvecs(vecs_lps, affine_ras)
    atomic_write_text(bvec_path, "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in rows), fsync=False)
    return bval_path, bvec_path


def per_volume(vol: VolumePlan) -> dict[str, Any]:
    """Per-timepoint parameters for the sidecar: b-values, echo and trigger times (only those present)."""
    out: dict[str, Any] = {}
    if len(vol.slices) < 2:
        return out
    first = [stack[0] for stack in vol.slices]
    for name, key in (("DiffusionBValues", "b"), ("EchoTimes", "te"), ("TriggerTimes", "trig")):
        values = [s.t.get(key) for s in first]
        if any(v is not None for v in values):
            out[name] = values
    table = diffusion_table(vol)
    if table is not None:
        out["DiffusionGradientDirectionsLPS"] = [[round(float(x), 6) for x in v] for v in table[1]]
    return out
