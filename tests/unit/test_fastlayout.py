"""The layout-replaying fast reader gives the full walk's result on every file, and pydicom's values.

Oracles: :func:`imaging.dicom.fastheader.read_fast` (the element-by-element walk, itself checked
against pydicom in test_ingest_scan) on the same bytes, and pydicom for the values that change
from slice to slice. Cases: real Philips headers in series (the layout serves), values whose
width changes from file to file (shifts), and damaged copies (never a wrong answer).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pydicom
import pytest

from imaging.dicom import fastheader, fastlayout
from imaging.synth.bench import write_philips_export


@pytest.fixture(autouse=True)
def _fresh_layouts() -> None:
    fastlayout.forget()


def _same(buf: bytes, complete: bool = True) -> tuple[str, object]:
    """Both readers' outcome on ``buf`` (a result, or the exception's type), asserted equal."""
    outcomes = []
    for read in (fastheader.read_fast, fastlayout.read_fast_replayed):
        try:
            outcomes.append(("ok", read(buf, complete)))
        except fastheader.NeedMore as exc:
            outcomes.append(("raised", type(exc).__name__))
    assert outcomes[0] == outcomes[1]
    return outcomes[1]


@pytest.fixture(scope="module")
def philips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("philips")
    write_philips_export(root, n_files=40, slices=10, matrix=8)
    return sorted(p for p in root.rglob("IM*"))


def test_a_series_of_real_philips_headers_is_replayed_with_the_full_walks_values(philips: list[Path]) -> None:
    for path in philips:
        kind, result = _same(path.read_bytes())
        assert kind == "ok" and result is not None
        attrs = result[0]  # type: ignore[index]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert attrs["SOPInstanceUID"] == ds.SOPInstanceUID
        assert attrs["InstanceNumber"] == ds.InstanceNumber
        assert attrs["ImagePositionPatient"] == [float(v) for v in ds.ImagePositionPatient]
        assert attrs["RealWorldValueMapping"] == [float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope),
                                                  float(ds.RealWorldValueMappingSequence[0].RealWorldValueIntercept)]
    # One walk per layout (4 series, UIDs of other lengths between them); the rest replayed.
    assert fastlayout.served() >= len(philips) - 4


def test_values_of_other_widths_shift_the_layout(philips: list[Path]) -> None:
    ds = pydicom.dcmread(philips[0])
    for i in range(24):
        ds.ImagePositionPatient = [f"{v:.{1 + i % 9}f}" for v in (-112.5, 20.5 * i, 3.0 + i)]
        ds.InstanceNumber = 10 ** (i % 6)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID.split('.9')[0]}.9{'1' * (i % 7)}"
        ds.SeriesDescription = "T1 " * (i % 4)  # empty now and then: no value
        out = io.BytesIO()
        ds.save_as(out)
        kind, result = _same(out.getvalue())
        assert kind == "ok" and result is not None
        attrs = result[0]  # type: ignore[index]
        assert attrs["ImagePositionPatient"] == [-112.5, 20.5 * i, 3.0 + i]
        assert attrs["InstanceNumber"] == 10 ** (i % 6)
        assert attrs["SOPInstanceUID"] == ds.SOPInstanceUID
    assert fastlayout.served() >= 20


def test_damaged_and_cut_copies_get_the_full_walks_answer(philips: list[Path]) -> None:
    rng = random.Random(7)
    original = philips[0].read_bytes()
    _same(original)  # its layout is kept: every copy below is tried against it first
    pixel_at = original.index(b"\xe0\x7f\x10\x00")
    for _ in range(300):
        copy = bytearray(original)
        at = rng.randrange(132, pixel_at + 12)
        change = rng.random()
        if change < 0.5:
            copy[at] ^= 1 << rng.randrange(8)
        elif change < 0.75:
            copy[at:at] = bytes(rng.randrange(1, 4))
        else:
            del copy[at:at + rng.randrange(1, 4)]
        _same(bytes(copy))
        _same(bytes(copy[:rng.randrange(200, len(copy))]), complete=False)


def test_implicit_vr_files_are_replayed_too() -> None:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    for i in range(12):
        ds.ImagePositionPatient = [1.5, -2.25 * i, 0.125 * i]
        ds.InstanceNumber = 37 * i
        ds.PixelData = bytes([i]) + ds.PixelData[1:]  # pixels differ from file to file, as they do
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)
        kind, result = _same(out.getvalue())
        assert kind == "ok" and result is not None
        assert result[1] == pydicom.uid.ImplicitVRLittleEndian  # type: ignore[index]
        assert result[0]["ImagePositionPatient"] == [1.5, -2.25 * i, 0.125 * i]  # type: ignore[index]
    assert fastlayout.served() >= 10
