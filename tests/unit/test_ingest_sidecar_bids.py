"""The JSON sidecar uses BIDS keys in BIDS units, checked against dcm2niix's own sidecar (``-b y``).

dcm2niix is the oracle: each value below is read from the sidecar it writes for the same
DICOM files, never computed with our conversion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.fixtures.vendor_mr import write_dual_echo_mag_phase, write_ge_fmri, write_mosaic_series
from tests.unit.test_ingest_geometry import run

# Keys both sidecars must carry with the same value (BIDS units: seconds, degrees, tesla, MHz).
SHARED_KEYS = ("EchoTime", "RepetitionTime", "FlipAngle", "MagneticFieldStrength", "ImagingFrequency",
               "Manufacturer", "ManufacturersModelName", "MRAcquisitionType", "PixelBandwidth",
               "SliceThickness", "SpacingBetweenSlices", "EchoTrainLength", "InversionTime")


def _dcm2niix_sidecars(src: Path, out: Path) -> list[tuple[Path, dict]]:
    exe = Path(sys.executable).parent / "dcm2niix"
    exe_str = str(exe) if exe.exists() else shutil.which("dcm2niix")
    assert exe_str, "dcm2niix (pip package dcm2niix) is required as the oracle"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe_str, "-z", "y", "-b", "y", "-f", "%s_%e_%p", "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=120)
    return [(p, json.loads(p.with_name(p.name.replace(".nii.gz", ".json")).read_text()))
            for p in sorted(out.glob("*.nii.gz"))]


def _ours(summary, dataset: Path) -> list[tuple[Path, dict]]:
    rows = [r for r in summary.rows if r.status == "ok"]
    assert rows and len(rows) == len(summary.rows), [(r.status, r.reason) for r in summary.rows]
    return [(dataset / r.volume_path,
             json.loads((dataset / r.volume_path.replace(".nii.gz", ".json")).read_text())) for r in rows]


def _world_axis(nii: Path, axis: str) -> np.ndarray:
    """Unit world (RAS) direction of voxel axis ``i``/``j``/``k`` of a NIfTI file."""
    col = nib.load(nii).affine[:3, "ijk".index(axis[0])]
    return col / np.linalg.norm(col)


@pytest.mark.parametrize("writer", ["mosaic", "ge_fmri", "dual_echo_siemens", "dual_echo_ge"])
def test_sidecar_values_match_dcm2niix(tmp_path: Path, writer: str) -> None:
    src = tmp_path / "in" / "s"
    if writer == "mosaic":
        write_mosaic_series(src, n_time=2)
    elif writer == "ge_fmri":
        write_ge_fmri(src)
    else:
        write_dual_echo_mag_phase(src, vendor=writer.rsplit("_", 1)[1])
    ours = _ours(run(tmp_path / "in", tmp_path), tmp_path / "ds")
    theirs = _dcm2niix_sidecars(tmp_path / "in", tmp_path / "d2n")
    echo_times = sorted({t["EchoTime"] for _, t in theirs})
    compared = 0
    for nii, side in ours:
        assert side["ConversionSoftware"] == "imaging" and side["ConversionSoftwareVersion"]
        assert "ManufacturerModelName" not in side  # the DICOM name is not repeated beside the BIDS one
        # the dcm2niix volume with the same echo time (multi-echo: one per echo)
        match = [t for _, t in theirs if t.get("EchoTime") == side.get("EchoTime")]
        assert match, (side.get("EchoTime"), echo_times)
        ref = match[0]
        for key in SHARED_KEYS:
            if key in ref:
                if isinstance(ref[key], str):  # dcm2niix shortens 'GE MEDICAL SYSTEMS' to 'GE'
                    assert str(side.get(key)).lower().startswith(ref[key].lower()), key
                else:
                    assert side.get(key) == pytest.approx(ref[key], rel=1e-4), key
                compared += 1
        assert side["EchoTime"] < 1.0 and side["RepetitionTime"] < 30.0  # seconds, not ms
        for path, t in theirs:
            if t.get("EchoTime") != side["EchoTime"] or "PhaseEncodingDirection" not in t:
                continue
            # the phase-encoding axis (and its sign, where we claim one) names the same world direction
            ours_pe = side.get("PhaseEncodingDirection") or side.get("PhaseEncodingAxis")
            assert ours_pe, sorted(side)
            a, b = _world_axis(nii, ours_pe), _world_axis(path, t["PhaseEncodingDirection"])
            if "PhaseEncodingDirection" in side:
                a, b = a * (-1 if ours_pe.endswith("-") else 1), b * (-1 if t["PhaseEncodingDirection"].endswith("-") else 1)
                assert float(a @ b) > 0.99, (ours_pe, t["PhaseEncodingDirection"])
            else:
                assert abs(float(a @ b)) > 0.99
            for key in ("TotalReadoutTime", "EffectiveEchoSpacing"):
                if key in t:
                    assert side.get(key) == pytest.approx(t[key], rel=1e-4), key
            if "SliceTiming" in t:  # matched slice by slice through the world: k may run either way
                k_ours, k_theirs = _world_axis(nii, "k"), _world_axis(path, "k")
                timing = side["SliceTiming"] if float(k_ours @ k_theirs) > 0 else side["SliceTiming"][::-1]
                assert timing == pytest.approx(t["SliceTiming"], abs=1e-4)
    assert compared >= 5 * len(ours)
    if writer == "mosaic":  # dcm2niix's Siemens-derived values are there to compare with
        assert {"SliceTiming", "TotalReadoutTime", "PhaseEncodingDirection"} <= set(ours[0][1])


def test_multi_echo_lists_in_seconds(tmp_path: Path) -> None:
    """Per-volume echo times of a 4D volume are seconds too (our key, BIDS unit)."""
    from imaging.dicom.sidecar import bids_keys

    out = bids_keys({"EchoTimes": [12.0, 30.0], "EchoTime": 12.0, "TriggerTimes": [0.0, 500.0],
                     "ManufacturerModelName": "Skyra", "FlipAngle": 90.0})
    assert out == {"EchoTimes": [0.012, 0.03], "EchoTime": 0.012, "TriggerTimes": [0.0, 500.0],
                   "ManufacturersModelName": "Skyra", "FlipAngle": 90.0}
