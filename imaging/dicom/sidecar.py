"""The JSON sidecar of a volume: acquisition parameters users need, and no PHI.

Only an allow-list of technical attributes read by the scan is copied; names,
IDs, dates, UIDs, descriptions and institution never reach the index's
``params`` column in the first place, and patient age/sex only pass when
``keep_patient_characteristics`` is set.

Keys that BIDS defines are written under the BIDS name in BIDS units, as
dcm2niix's sidecar (``-b y``) does: fMRIPrep or QSIPrep read ``EchoTime`` in
seconds, and a DICOM value in ms under that name is a 1000x error. Times are
converted here (DICOM stores ms); keys BIDS does not define keep DICOM's name
and unit.
"""

from __future__ import annotations

from typing import Any

import imaging
from imaging.dicom.diffusion import per_volume
from imaging.dicom.geometry import Grid
from imaging.dicom.series import KEY_TAGS, SeriesPlan, VolumePlan
from imaging.dicom.syntax import ts_name

PATIENT_CHARACTERISTICS = ("PatientAge", "PatientSex")
# DICOM keyword (ms) -> BIDS key (s).
MS_TO_S = {"EchoTime": "EchoTime", "RepetitionTime": "RepetitionTime", "InversionTime": "InversionTime",
           "EchoTimes": "EchoTimes"}
# DICOM keyword -> BIDS key, same unit.
RENAMED = {"ManufacturerModelName": "ManufacturersModelName"}


def _seconds(value: Any) -> Any:
    """ms -> s, rounded as dcm2niix prints (6 significant digits); lists element-wise."""
    if isinstance(value, (list, tuple)):
        return [_seconds(v) for v in value]
    if value is None or isinstance(value, str):
        return value
    return float(f"{float(value) / 1000.0:.6g}")


def bids_keys(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with BIDS-defined keys renamed and converted to BIDS units."""
    out = dict(params)
    for dicom, bids in MS_TO_S.items():
        if dicom in out:
            out[bids] = _seconds(out.pop(dicom))
    for dicom, bids in RENAMED.items():
        if dicom in out:
            out[bids] = out.pop(dicom)
    return out


def phase_encoding_axis(grid: Grid, affine_ras: Any, direction: Any) -> str | None:
    """BIDS ``PhaseEncodingAxis`` (``i``/``j``/``k``) of the written volume, or None.

    (0018,1312) InPlanePhaseEncodingDirection says ``ROW`` (along a row: DICOM's row
    direction cosine) or ``COL`` (down a column). The voxel axis of the output whose
    direction is parallel to that world direction is the answer, whatever order the
    volume's axes were written in. The polarity (``j`` vs ``j-``) is not in the
    standard header (only in vendor private data), so only the axis is claimed.
    """
    import numpy as np

    text = str(direction or "").strip().upper()
    if text not in ("ROW", "COL", "COLUMN"):
        return None
    lps = np.asarray(grid.row_dir if text == "ROW" else grid.col_dir, float)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    m = np.asarray(affine_ras, float)[:3, :3]
    cols = m / np.linalg.norm(m, axis=0)
    cos = np.abs(ras @ cols)
    axis = int(np.argmax(cos))
    return "ijk"[axis] if cos[axis] > 0.9 else None


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


def _phase_encoding(vol: VolumePlan, grid: Grid, axis: str | None, direction: str,
                    shape: tuple[int, ...]) -> dict[str, Any]:
    """PhaseEncodingDirection (with its sign where Siemens' CSA gives it, else PhaseEncodingAxis),
    EffectiveEchoSpacing and TotalReadoutTime (Siemens (0019,1028) BandwidthPerPixelPhaseEncode),
    as dcm2niix derives them: EES = 1 / (BWPPPE x ReconMatrixPE), TRT = EES x (ReconMatrixPE - 1)."""
    import numpy as np

    if axis is None:
        return {}
    t = vol.slices[0][0].t
    out: dict[str, Any] = {}
    positive = t.get("pe_pos")
    if positive is None:
        out["PhaseEncodingAxis"] = axis
    else:
        # CSA PhaseEncodingDirectionPositive=1: along +the DICOM direction (0018,1312) names
        # (rows: the row cosine; COL: the column cosine); the sign is that of our voxel axis.
        lps = np.asarray(grid.row_dir if direction.upper().startswith("ROW") else grid.col_dir, float)
        ras = lps * np.array([-1.0, -1.0, 1.0]) * (1.0 if positive else -1.0)
        column = np.asarray(grid.affine_ras, float)[:3, "ijk".index(axis)]
        out["PhaseEncodingDirection"] = axis if float(ras @ column) > 0 else f"{axis}-"
    bw = t.get("bwpppe")
    n_pe = shape["ijk".index(axis)] if len(shape) > "ijk".index(axis) else 0
    if isinstance(bw, (int, float)) and bw > 0 and n_pe > 1:
        spacing = 1.0 / (float(bw) * n_pe)
        out["EffectiveEchoSpacing"] = float(f"{spacing:.6g}")
        out["TotalReadoutTime"] = float(f"{spacing * (n_pe - 1):.6g}")
    return out


def _slice_timing(vol: VolumePlan, grid: Grid) -> list[float] | None:
    """Each written slice's acquisition time in s from the volume's start (Siemens mosaics:
    CSA MosaicRefAcqTimes), in the volume's slice order; None when unknown or resampled."""
    times = [s.t.get("slice_time") for s in vol.slices[0]]
    numbers = [float(x) for x in times if isinstance(x, (int, float))]
    if grid.resampled or not times or len(numbers) != len(times):
        return None
    return [round(x / 1000.0, 6) for x in numbers]


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
    pe_axis = phase_encoding_axis(grid, grid.affine_ras, params.get("InPlanePhaseEncodingDirection"))
    out: dict[str, Any] = dict(sorted(bids_keys(params).items()))
    out.update(_phase_encoding(vol, grid, pe_axis, str(params.get("InPlanePhaseEncodingDirection") or ""),
                               data_shape))
    if (timing := _slice_timing(vol, grid)) is not None:
        out["SliceTiming"] = timing
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
        **bids_keys(per_volume(vol)),
        "ConversionSoftware": "imaging",
        "ConversionSoftwareVersion": imaging.__version__,
        "Coordinates": "NIfTI RAS+ (sform/qform code 1 = scanner), converted from DICOM LPS",
    })
    return out
