"""Philips enhanced multi-frame pCASL and multi-echo field maps (issue 27, class 5).

The files are built from a real Philips enhanced MR object (nibabel's test data, see
tests/fixtures/philips_enhanced.py). Two oracles: dcm2niix on the same file (volumes compared
after both are reoriented to RAS with nibabel's ``as_closest_canonical``) and the DICOM itself
(pydicom's ``pixel_array`` per frame at its own PlanePositionSequence, times its own
PixelValueTransformationSequence rescale, grouped by the frame's own ASLContext / echo time /
ComplexImageComponent).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from tests.fixtures.datasets import WrittenSlice
from tests.fixtures.philips_enhanced import (
    PHILIPS_PRIVATE_CLASS,
    to_float_pixels,
    write_philips_field_map,
    write_philips_pcasl,
    write_philips_private_series_data,
)
from tests.fixtures.vendor_mr import dcm2niix
from tests.unit.test_ingest_geometry import assert_matches_dicom, run

RAW_DATA = "1.2.840.10008.5.1.4.1.1.66"  # Raw Data Storage: a standard class without pixels


def dicom_frames(path: Path, key: Callable[[Dataset], tuple[object, ...]]) -> dict[tuple[object, ...], list[WrittenSlice]]:
    """The file's frames by ``key(per-frame item)``: position, orientation, spacing, stored values, rescale."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    out: dict[tuple[object, ...], list[WrittenSlice]] = defaultdict(list)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pvt = item.PixelValueTransformationSequence[0]
        out[key(item)].append(WrittenSlice(
            path, tuple(map(float, item.PlanePositionSequence[0].ImagePositionPatient)),
            tuple(map(float, item.PlaneOrientationSequence[0].ImageOrientationPatient)),
            tuple(map(float, item.PixelMeasuresSequence[0].PixelSpacing)), pixels[i],
            float(pvt.RescaleSlope), float(pvt.RescaleIntercept)))
    return out


def canonical_volumes(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RAS affine, each 3D volume) of a NIfTI file, reoriented to the closest canonical (RAS) axes."""
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    vols = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    return img.affine, vols


def assert_same_volumes_as_dcm2niix(ours: list[Path], theirs: list[Path], rtol: float = 0.0) -> None:
    """Every 3D volume of ours equals exactly one of dcm2niix's (same affine, same values), and none is left over."""
    their_vols = [(aff, v) for p in theirs for aff, vs in [canonical_volumes(p)] for v in vs]
    used: set[int] = set()
    for path in ours:
        aff, vols = canonical_volumes(path)
        for v in vols:
            hits = [j for j, (a, w) in enumerate(their_vols) if w.shape == v.shape
                    and np.allclose(a, aff, atol=1e-3) and np.allclose(w, v, rtol=rtol, atol=1e-3)]
            assert len(hits) == 1 and hits[0] not in used, (path.name, hits)
            used.add(hits[0])
    assert len(used) == len(their_vols)


def _asl_key(item: Dataset) -> tuple[object, ...]:
    return (str(item.MRArterialSpinLabelingSequence[0].ASLContext),
            int(item.FrameContentSequence[0].TemporalPositionIndex) - 1)


@pytest.mark.parametrize("sop_class", [PHILIPS_PRIVATE_CLASS, RAW_DATA])
def test_philips_pcasl_beside_private_series_data_is_label_and_control_4d(tmp_path: Path, sop_class: str) -> None:
    """The reported failure: Philips' private series-data object (no pixels, no BitsAllocated)
    shares the pCASL series' UID; the series was refused as "BitsAllocated = None"."""
    src = tmp_path / "in" / "IM_0001"
    write_philips_pcasl(src, n_dyn=2)
    write_philips_private_series_data(tmp_path / "in" / "XX_0001", like=src, sop_class=sop_class)
    summary = run(tmp_path / "in", tmp_path)
    assert summary.counts == {"ok": 2}, [(r.status, r.reason) for r in summary.rows]
    frames = dicom_frames(src, _asl_key)
    for r in summary.rows:
        context = "LABEL" if "ASL label" in r.reason else "CONTROL"
        assert f"ASL {context.lower()}" in r.reason and r.shape == "24x20x3x2" and r.n_instances == 1
        assert "4th axis (2): (0020,0100) TemporalPositionIdentifier / (0020,9128) TemporalPositionIndex" in r.reason
        assert "1 non-image instance(s) of the series left out (no pixel data): file file-" in r.reason
        assert sop_class in r.reason and "XX_0001" not in r.reason
        for dyn in range(2):
            assert_matches_dicom(tmp_path / "ds" / r.volume_path, frames[(context, dyn)], t=dyn)
    # one 4D file, label and control interleaved; -p n: displayed values (RescaleSlope), as ours
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n", "-p", "n")
    assert len(theirs) == 1 and nib.load(theirs[0]).shape[3] == 4
    assert_same_volumes_as_dcm2niix([tmp_path / "ds" / r.volume_path for r in summary.rows], theirs)


def _save(ds: Dataset, path: Path, encoding: str) -> None:
    if encoding == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, implicit_vr=True, little_endian=True)
    elif encoding == "big":  # pixels byte-swapped by hand: pydicom writes OW bytes as given
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(path)


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big"])
def test_philips_pcasl_private_label_type_alone_separates_label_and_control(tmp_path: Path, encoding: str) -> None:
    """Without the standard ASLContext, Philips' per-frame private (2005,1429) tells them apart,
    in every encoding (implicit VR: the private values arrive undecoded)."""
    src = tmp_path / "in" / "IM_0001"
    write_philips_pcasl(src, n_dyn=2)
    frames = dicom_frames(src, _asl_key)  # the frame's own context, before it is taken out
    ds = pydicom.dcmread(src)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.MRArterialSpinLabelingSequence
    _save(ds, src, encoding)
    summary = run(tmp_path / "in", tmp_path)
    assert summary.counts == {"ok": 2}, [(r.status, r.reason) for r in summary.rows]
    for r in summary.rows:
        context = "LABEL" if "ASL label" in r.reason else "CONTROL"
        assert f"ASL {context.lower()}" in r.reason and r.shape == "24x20x3x2"
        for dyn in range(2):
            assert_matches_dicom(tmp_path / "ds" / r.volume_path, frames[(context, dyn)], t=dyn)


def _echo_component_key(item: Dataset) -> tuple[object, ...]:
    return (str(item.MRImageFrameTypeSequence[0].ComplexImageComponent)[0],
            float(item.MREchoSequence[0].EffectiveEchoTime))


@pytest.mark.parametrize(("comps", "standard_component"), [
    (("MAGNITUDE", "PHASE"), True), (("REAL", "IMAGINARY"), True),
    # no (0008,9208) ComplexImageComponent: FrameType (M) or Philips' (2005,1011) (P) names the component
    (("MAGNITUDE", "PHASE"), False)])
def test_philips_multi_echo_field_maps_are_one_volume_per_echo_and_component(
        tmp_path: Path, comps: tuple[str, str], standard_component: bool) -> None:
    src = tmp_path / "in" / "IM_0001"
    write_philips_field_map(src, components=comps)
    write_philips_private_series_data(tmp_path / "in" / "XX_0001", like=src)
    frames = dicom_frames(src, _echo_component_key)  # each frame's own component and echo time
    if not standard_component:
        ds = pydicom.dcmread(src)
        for item in ds.PerFrameFunctionalGroupsSequence:
            del item.MRImageFrameTypeSequence[0].ComplexImageComponent
        ds.save_as(src)
    summary = run(tmp_path / "in", tmp_path)
    assert summary.counts == {"ok": 4}, [(r.status, r.reason) for r in summary.rows]
    seen = set()
    for r in summary.rows:
        (comp, te), = [k for k in frames if f"component {k[0]}, echo {k[1]:g}" in r.reason]
        seen.add((comp, te))
        assert r.shape == "24x20x3"
        assert_matches_dicom(tmp_path / "ds" / r.volume_path, frames[(comp, te)])
    assert seen == set(frames)
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n", "-p", "n")
    assert_same_volumes_as_dcm2niix([tmp_path / "ds" / r.volume_path for r in summary.rows], theirs)


def test_image_without_bits_allocated_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "in" / "IM_0001"
    write_philips_pcasl(src, n_dyn=1)
    ds = pydicom.dcmread(src)
    del ds.BitsAllocated  # an image SOP class: damaged, not a non-image object to leave out
    ds.save_as(src)
    (row,) = run(tmp_path / "in", tmp_path).rows
    assert row.status == "error" and row.reason.startswith("file file-")
    assert row.reason.endswith("missing (0028,0100) BitsAllocated: no pixel description at the top level of the file")


@pytest.mark.parametrize(("element", "big_endian", "bits_allocated"), [
    ("FloatPixelData", False, True), ("DoubleFloatPixelData", False, True),
    ("FloatPixelData", True, True), ("FloatPixelData", False, False)])
def test_float_pixel_data_is_read_as_floats(tmp_path: Path, element: str, big_endian: bool,
                                           bits_allocated: bool) -> None:
    """Philips writes some derived maps as (7FE0,0008)/(7FE0,0009) float pixels: once refused as
    "truncated: no (7FE0,0010) PixelData", now each frame's own float values."""
    src = tmp_path / "in" / "IM_0001"
    frames = write_philips_pcasl(src, n_dyn=2)
    values = to_float_pixels(src, frames, element, big_endian=big_endian, bits_allocated=bits_allocated)
    if bits_allocated:  # pydicom's reading agrees with what was written (it needs BitsAllocated)
        np.testing.assert_array_equal(pydicom.dcmread(src).pixel_array, values)
    summary = run(tmp_path / "in", tmp_path)
    assert summary.counts == {"ok": 2}, [(r.status, r.reason) for r in summary.rows]
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    by_key: dict[tuple[object, ...], list[WrittenSlice]] = defaultdict(list)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        by_key[_asl_key(item)].append(WrittenSlice(
            src, tuple(map(float, item.PlanePositionSequence[0].ImagePositionPatient)),
            tuple(map(float, item.PlaneOrientationSequence[0].ImageOrientationPatient)),
            tuple(map(float, item.PixelMeasuresSequence[0].PixelSpacing)), values[i].astype(np.float64), 1.0, 0.0))
    for r in summary.rows:
        img = nib.load(tmp_path / "ds" / r.volume_path)
        assert img.get_data_dtype() == np.dtype(values.dtype)  # no precision lost, no integer cast
        context = "LABEL" if "ASL label" in r.reason else "CONTROL"
        for dyn in range(2):
            assert_matches_dicom(tmp_path / "ds" / r.volume_path, by_key[(context, dyn)], t=dyn)
    if element == "FloatPixelData" and not big_endian and bits_allocated:
        theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n", "-p", "n")
        assert_same_volumes_as_dcm2niix([tmp_path / "ds" / r.volume_path for r in summary.rows], theirs)


def test_philips_precise_values_of_enhanced_frames_match_dcm2niix(tmp_path: Path) -> None:
    """philips_precise=true: each frame's own scale slope (2005,100E), which Philips keeps in the
    frame's private (2005,140F) item (not at the top level): dcm2niix's default -p y values."""
    src = tmp_path / "in" / "IM_0001"
    write_philips_pcasl(src, n_dyn=1)
    ds = pydicom.dcmread(src)
    slopes = {float(item[0x2005140F].value[0][0x2005100E].value) for item in ds.PerFrameFunctionalGroupsSequence}
    assert len(slopes) == 1 and 0x2005100E not in ds  # the real file's frame copies, none at the top level
    summary = run(tmp_path / "in", tmp_path, philips_precise=True)
    assert summary.counts == {"ok": 2}, [(r.status, r.reason) for r in summary.rows]
    theirs = dcm2niix(tmp_path / "in", tmp_path / "d2n")  # -p y is dcm2niix's default
    assert_same_volumes_as_dcm2niix([tmp_path / "ds" / r.volume_path for r in summary.rows], theirs, rtol=1e-6)
