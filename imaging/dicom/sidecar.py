"""The JSON sidecar of a volume: acquisition parameters users need, and no PHI.

Only an allow-list of technical attributes read by the scan is copied; names,
IDs, dates, UIDs, descriptions and institution never reach the index's
``params`` column in the first place, and patient age/sex only pass when
``keep_patient_characteristics`` is set.
"""

from __future__ import annotations

from typing import Any

from imaging.dicom.diffusion import per_volume
from imaging.dicom.geometry import Grid
from imaging.dicom.header import ts_name
from imaging.dicom.series import KEY_TAGS, SeriesPlan, VolumePlan

PATIENT_CHARACTERISTICS = ("PatientAge", "PatientSex")


def axis_codes(affine: Any) -> str:
    """NIfTI axis code such as ``RAS`` or ``LPS`` (nibabel's ``aff2axcodes`` for orthogonal affines).

    Greedy, like nibabel: the strongest remaining (world axis, voxel axis) pair is taken
    first, so two voxel axes of an oblique volume never get the same world axis.
    """
    import numpy as np

    m = np.asarray(affine, float)[:3, :3]
    m = np.abs(m / np.linalg.norm(m, axis=0)) * 1.0
    signed = np.asarray(affine, float)[:3, :3]
    out = [""] * 3
    work = m.copy()
    for _ in range(3):
        world, voxel = np.unravel_index(int(np.argmax(work)), work.shape)
        out[voxel] = ("LR", "PA", "IS")[world][int(signed[world, voxel] > 0)]
        work[world, :] = -1
        work[:, voxel] = -1
    return "".join(out)


def build_sidecar(
    plan: SeriesPlan, vol: VolumePlan, data_shape: tuple[int, ...], *, keep_patient_characteristics: bool = False
) -> dict[str, Any]:
    """Sidecar dict for one written volume (JSON-able)."""
    # This volume's own parameters (its first slice), not the series' first file: echoes differ.
    own = vol.slices[0][0].row.get("params") or plan.params
    params = {k: v for k, v in own.items()
              if keep_patient_characteristics or k not in PATIENT_CHARACTERISTICS}
    grid: Grid = vol.grid
    ts = params.pop("TransferSyntaxUID", None)
    out: dict[str, Any] = dict(sorted(params.items()))
    out.update({
        "TransferSyntax": ts_name(ts) if ts else None,
        "NumberOfInstances": vol.n_instances,
        "Shape": list(data_shape),
        "VoxelSpacing": [round(grid.dx, 6), round(grid.dy, 6), round(grid.dz, 6)],
        "Orientation": axis_codes(grid.affine_ras),
        "GantryTiltDeg": grid.tilt_deg,
        "SliceSpacingUneven": grid.uneven,
        "Resampled": grid.resampled,
        "Remarks": vol.remarks,
        "FourthAxis": KEY_TAGS[vol.t_key] if vol.t_key else None,
        **per_volume(vol),
        "Coordinates": "NIfTI RAS+ (sform/qform code 1 = scanner), converted from DICOM LPS",
    })
    return out
