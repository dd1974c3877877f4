"""DICOM SEG ground truth in ingest: overlapping segments, several instances, compressed frames.

Oracles: highdicom's own reading of each SEG (``get_pixels_by_source_instance``) or pydicom's
decoding of the uncompressed original, each pixel placed by the source file's own
ImagePositionPatient/PixelSpacing; never the ingest code's rasteriser.
"""

from __future__ import annotations

import copy
import logging
import shutil
import zlib
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import pack_bits
from pydicom.uid import generate_uid

from imaging.data.items import load_dataset_info, segmentation_items
from imaging.dicom.labels import LabelError
from imaging.dicom.seg_decode import seg_frames
from imaging.pipelines import ingest_series
from imaging.synth.seg import DEFLATED_IMAGE_FRAME, RLE_LOSSLESS, encode_seg_frames, save_encoded
from tests.fixtures.datasets import WrittenSlice, stack_positions, write_slices
from tests.unit.test_ingest_checks import pixel_world, run, to_voxel
from tests.unit.test_ingest_inputs import keyed

EXTRA = {"StudyDate": "20200101", "StudyTime": "1200", "AccessionNumber": "", "StudyID": "1",
         "ReferringPhysicianName": "", "PatientBirthDate": "", "PatientSex": "O", "PatientName": "Doe^Jane"}


def _source(folder: Path, n: int = 6, shape: tuple[int, int] = (8, 9), **kw) -> list[WrittenSlice]:
    extra = {**EXTRA, "FrameOfReferenceUID": kw.pop("for_uid", generate_uid())}
    return write_slices(folder, stack_positions(n, gap=2.0), shape=shape, spacing=(1.0, 1.0), extra=extra, **kw)


def _seg(srcs: list[Path], masks: dict[str, np.ndarray], *, seg_type: str = "BINARY",
         series_uid: str | None = None, number: int = 1) -> hd.seg.Segmentation:
    """A SEG over ``srcs``: ``masks`` name -> (slices, rows, cols) bool, segment numbers in order."""
    descs = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n, name in enumerate(masks, start=1)]
    stack = np.stack(list(masks.values()), -1).astype(np.uint8)
    if seg_type == "LABELMAP":  # one value per pixel: the highest segment number wins
        stack = (stack * np.arange(1, stack.shape[-1] + 1)).max(-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=[pydicom.dcmread(p) for p in srcs], pixel_array=stack, segmentation_type=seg_type,
        segment_descriptions=descs, series_instance_uid=series_uid or generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=number, manufacturer="t", manufacturer_model_name="t",
        software_versions="1", device_serial_number="1")


def _save(seg: hd.seg.Segmentation, path: Path, ts: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if ts is None:
        seg.save_as(path)
    else:
        save_encoded(encode_seg_frames(seg, ts), path)
    return path


def _expected(native_seg: Path, slices: list[WrittenSlice], img: nib.Nifti1Image, channel_of: dict[int, int],
              n_channels: int) -> np.ndarray:
    """(x, y, z, C) one-hot from highdicom's reading of the SEG, placed by each source pixel's position."""
    seg = hd.seg.segread(native_seg)
    uids = [str(pydicom.dcmread(s.path).SOPInstanceUID) for s in slices]
    numbers = sorted(channel_of)
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=False,
                                               skip_overlap_checks=True)
    out = np.zeros((*img.shape[:3], n_channels), np.uint8)
    for s, planes in zip(slices, pixels, strict=True):
        lps, _ = pixel_world(s.path)
        idx = np.rint(to_voxel(img, lps)).astype(int)
        for j, number in enumerate(numbers):
            hit = planes[..., j] > 0
            out[idx[..., 0][hit], idx[..., 1][hit], idx[..., 2][hit], channel_of[number]] = 1
    out[..., 0] = ~out[..., 1:].any(-1)
    return out


def test_overlapping_segments_become_a_onehot_label_volume_that_training_refuses(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slices = _source(tmp_path / "in" / "s")
    liver, tumor = np.zeros((6, 8, 9), bool), np.zeros((6, 8, 9), bool)
    liver[1:5, 2:6, 2:6] = True  # 64 voxels
    tumor[2:4, 3:5, 2:6] = True  # 16 voxels, all inside the liver
    seg_path = _save(_seg([s.path for s in slices], {"Liver": liver, "Tumor": tumor}), tmp_path / "in" / "g" / "seg.dcm")
    summary = run(tmp_path / "in", tmp_path)
    row = next(r for r in summary.rows if r.volume_path)
    assert row.status == "ok" and row.label_path and summary.label_errors == 0, row.reason
    assert row.label_layout == "onehot"
    img = nib.load(tmp_path / "ds" / row.label_path)
    data = np.asarray(img.dataobj)
    ids = {v: int(k) for k, v in summary.labels.items()}
    assert data.ndim == 4 and data.shape[:3] == (9, 8, 6) and data.shape[3] == max(ids["liver"], ids["tumor"]) + 1
    want = _expected(seg_path, slices, img, {1: ids["liver"], 2: ids["tumor"]}, data.shape[3])
    np.testing.assert_array_equal(data, want)
    assert data[..., ids["liver"]].sum() == 64 and data[..., ids["tumor"]].sum() == 16  # no voxel flattened away
    # The data loader reads label maps: a 4D one-hot label is left out, by name, never fed as one.
    with caplog.at_level(logging.WARNING, logger="imaging.data.items"):
        assert segmentation_items(load_dataset_info(tmp_path / "ds"), None) == []
    assert row.series_key in caplog.text and "one-hot" in caplog.text


def test_disjoint_segments_stay_a_label_map(tmp_path: Path) -> None:
    slices = _source(tmp_path / "in" / "s")
    liver, spleen = np.zeros((6, 8, 9), bool), np.zeros((6, 8, 9), bool)
    liver[1:3, 2:4, 2:4] = spleen[3:5, 5:7, 5:8] = True
    _save(_seg([s.path for s in slices], {"Liver": liver, "Spleen": spleen}), tmp_path / "in" / "g" / "seg.dcm")
    summary = run(tmp_path / "in", tmp_path)
    row = next(r for r in summary.rows if r.volume_path)
    assert row.label_layout == "labelmap" and summary.label_errors == 0
    assert np.asarray(nib.load(tmp_path / "ds" / row.label_path).dataobj).ndim == 3
    assert [i["series_key"] for i in segmentation_items(load_dataset_info(tmp_path / "ds"), None)] == [row.series_key]


@pytest.mark.parametrize(("ts", "seg_type"), [(RLE_LOSSLESS, "BINARY"), (DEFLATED_IMAGE_FRAME, "BINARY"),
                                              (DEFLATED_IMAGE_FRAME, "LABELMAP")])
def test_compressed_seg_frames_decode_to_the_uncompressed_original(tmp_path: Path, ts: str, seg_type: str) -> None:
    # 6x7 frames: 42 one-bit pixels, so an uncompressed multi-frame SEG packs frames across byte boundaries
    # while each compressed frame starts on its own byte.
    slices = _source(tmp_path / "in" / "s", shape=(6, 7))
    liver, spleen = np.zeros((6, 6, 7), bool), np.zeros((6, 6, 7), bool)
    liver[0, 1:3, 2:5] = liver[2, 2, 2] = liver[3, 5, 6] = True
    spleen[5, 4:6, 0:3] = True
    seg = _seg([s.path for s in slices], {"Liver": liver, "Spleen": spleen}, seg_type=seg_type)
    native = _save(seg, tmp_path / "native" / "seg.dcm")
    packed = _save(seg, tmp_path / "in" / "g" / "seg.dcm", ts)
    ds = pydicom.dcmread(packed)
    assert ds.file_meta.TransferSyntaxUID == ts and ds["PixelData"].is_undefined_length
    original = pydicom.dcmread(native).pixel_array.reshape(-1, 6, 7)
    np.testing.assert_array_equal(seg_frames(ds, "seg.dcm"), original)
    # End to end: the labels land where highdicom puts the uncompressed original's pixels.
    summary = run(tmp_path / "in", tmp_path)
    row = next(r for r in summary.rows if r.volume_path)
    assert row.status == "ok" and row.label_path and summary.label_errors == 0, row.reason
    img = nib.load(tmp_path / "ds" / row.label_path)
    ids = {v: int(k) for k, v in summary.labels.items()}
    want = _expected(native, slices, img, {1: ids["liver"], 2: ids["spleen"]}, max(ids.values()) + 1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.argmax(want, axis=-1))


def test_undecodable_seg_names_its_transfer_syntax(tmp_path: Path) -> None:
    slices = _source(tmp_path / "in" / "s", shape=(6, 7))
    mask = np.zeros((6, 6, 7), bool)
    mask[1, 1, 1] = True
    seg = encode_seg_frames(_seg([s.path for s in slices], {"Liver": mask}), RLE_LOSSLESS)
    seg.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder here
    save_encoded(seg, tmp_path / "in" / "g" / "seg.dcm")
    summary = run(tmp_path / "in", tmp_path)
    row = next(r for r in summary.rows if r.volume_path)
    assert row.status == "ok" and not row.label_path and summary.label_errors == 1
    assert "labels not written" in row.reason and keyed("g/seg.dcm") in row.reason
    assert "(0002,0010) TransferSyntaxUID = '1.2.840.10008.1.2.4.100' (MPEG2" in row.reason


def test_three_instances_of_an_orphan_seg_series_each_become_a_label_volume(tmp_path: Path) -> None:
    # One segmentation stored three ways: uncompressed over 16x16 frames, the same as deflated frames,
    # and over 14x14 frames cropped by one pixel on each side. The source series is not in the export.
    for_uid = generate_uid()
    full = _source(tmp_path / "src16", n=5, shape=(16, 16), for_uid=for_uid)
    crop = write_slices(tmp_path / "src14", [np.asarray(s.ipp) + [1.0, 1.0, 0.0] for s in full], shape=(14, 14),
                        spacing=(1.0, 1.0), extra={**EXTRA, "FrameOfReferenceUID": for_uid})
    mask = np.zeros((5, 16, 16), bool)
    mask[1:4, 3:9, 4:12] = True
    mask[2, 1:15, 1:15] = True  # reaches the cropped frame's edges
    uid = generate_uid()
    paths = [_save(_seg([s.path for s in full], {"Liver": mask}, series_uid=uid, number=1), tmp_path / "in" / "g" / "a.dcm"),
             _save(_seg([s.path for s in full], {"Liver": mask}, series_uid=uid, number=2), tmp_path / "in" / "g" / "b.dcm",
                   DEFLATED_IMAGE_FRAME),
             _save(_seg([s.path for s in crop], {"Liver": mask[:, 1:15, 1:15]}, series_uid=uid, number=3),
                   tmp_path / "in" / "g" / "c.dcm")]
    summary = run(tmp_path / "in", tmp_path)
    rows = sorted(summary.rows, key=lambda r: r.series_key)
    assert [r.status for r in rows] == ["ok"] * 3 and summary.label_errors == 0, [r.reason for r in rows]
    assert [r.series_key.rsplit("_", 1)[1] for r in rows] == ["1", "2", "3"]
    ids = {v: int(k) for k, v in summary.labels.items()}
    for row, path, native, srcs in zip(rows, paths, [paths[0], paths[0], paths[2]], [full, full, crop], strict=True):
        assert keyed(f"g/{path.name}") in row.reason and row.label_layout == "labelmap"
        img = nib.load(tmp_path / "ds" / row.label_path)
        data = np.asarray(img.dataobj)
        assert data.shape[:2] == ((16, 16) if srcs is full else (14, 14))
        labelled = [s for s, m in zip(srcs, mask, strict=True) if m.any()]  # slices the SEG has frames for
        got = []
        for s in labelled:  # each source pixel, by its own position, in this instance's own volume
            lps, _ = pixel_world(s.path)
            idx = np.rint(to_voxel(img, lps)).astype(int)
            got.append(data[idx[..., 0], idx[..., 1], idx[..., 2]])
        want = _expected_planes(native, labelled)
        np.testing.assert_array_equal(np.stack(got), want * ids["liver"])
        assert (data > 0).sum() == want.sum()


def _expected_planes(native_seg: Path, slices: list[WrittenSlice]) -> np.ndarray:
    uids = [str(pydicom.dcmread(s.path).SOPInstanceUID) for s in slices]
    return hd.seg.segread(native_seg).get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0] > 0


def test_instances_of_one_source_series_combine_when_they_agree_and_are_named_when_not(tmp_path: Path) -> None:
    slices = _source(tmp_path / "in" / "s")
    mask = np.zeros((6, 8, 9), bool)
    mask[1:4, 2:6, 2:7] = True
    _save(_seg([s.path for s in slices], {"Liver": mask}), tmp_path / "in" / "g" / "a.dcm")
    # The same segmentation stored another way (another SEG instance, RLE frames).
    _save(_seg([s.path for s in slices], {"Liver": mask}), tmp_path / "in" / "g" / "b.dcm", RLE_LOSSLESS)
    summary = run(tmp_path / "in", tmp_path)
    row = next(r for r in summary.rows if r.volume_path)
    assert row.label_layout == "labelmap" and summary.label_errors == 0, row.reason
    assert (np.asarray(nib.load(tmp_path / "ds" / row.label_path).dataobj) > 0).sum() == mask.sum()
    other = mask.copy()
    other[5, 0, 0] = True  # a second annotation of the liver, one voxel more
    _save(_seg([s.path for s in slices], {"Liver": other}), tmp_path / "in" / "g" / "c.dcm")
    summary = run(tmp_path / "in", tmp_path / "again")
    row = next(r for r in summary.rows if r.volume_path)
    assert row.status == "ok" and not row.label_path and summary.label_errors == 1
    assert keyed("g/a.dcm") in row.reason and keyed("g/c.dcm") in row.reason and "'liver'" in row.reason
    assert f"({mask.sum()} vs {other.sum()})" in row.reason


def test_deflated_frames_with_a_zlib_wrapper_decode_and_a_short_frame_is_named(tmp_path: Path) -> None:
    slices = _source(tmp_path / "s", shape=(6, 7))
    mask = np.zeros((6, 6, 7), bool)
    mask[1:4, 2:5, 1:6] = mask[4, 0, 0] = True
    seg = _seg([s.path for s in slices], {"Liver": mask})
    original = pydicom.dcmread(_save(seg, tmp_path / "native.dcm")).pixel_array.reshape(-1, 6, 7)
    ds = encode_seg_frames(seg, DEFLATED_IMAGE_FRAME)
    # Some writers wrap each frame's deflate stream in zlib's header and checksum (RFC 1950).
    ds.PixelData = encapsulate([zlib.compress(np.packbits(f.ravel(), bitorder="little").tobytes()) for f in original])
    np.testing.assert_array_equal(seg_frames(ds, "seg.dcm"), original)
    ds.PixelData = encapsulate([zlib.compress(b"\x00") for _ in original])  # 1 byte where 6 are needed
    with pytest.raises(LabelError, match=r"TransferSyntaxUID = '1\.2\.840\.10008\.1\.2\.8\.1' \(Deflated Image Frame "
                                         r"Compression\): a frame decodes to 1 bytes, 6 needed for 6x7 1-bit pixels"):
        seg_frames(ds, "seg.dcm")


def test_reingest_reuses_seg_labels_of_this_version_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slices = _source(tmp_path / "in" / "s")
    mask = np.zeros((6, 8, 9), bool)
    mask[2, 3, 4] = True
    _save(_seg([s.path for s in slices], {"Liver": mask}), tmp_path / "in" / "g" / "seg.dcm")
    assert run(tmp_path / "in", tmp_path).n_written == 1
    assert run(tmp_path / "in", tmp_path).n_reused == 1
    # Labels written by another version of the SEG rasteriser (flattened overlaps) are redone.
    monkeypatch.setattr(ingest_series, "SEG_LABELS_VERSION", ingest_series.SEG_LABELS_VERSION - 1)
    again = run(tmp_path / "in", tmp_path)
    assert (again.n_written, again.n_reused) == (1, 0)


LIVER = Path(pydicom.__file__).parent / "data" / "test_files" / "liver_1frame.dcm"  # a real SEG (QIICR), 512x512


def _variant(ds: pydicom.Dataset, path: Path, ts: str | None = None) -> Path:
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return _save(ds, path, ts)  # type: ignore[arg-type]


def test_a_real_seg_stored_four_ways_gives_four_label_volumes(tmp_path: Path) -> None:
    ds = pydicom.dcmread(LIVER)
    # The library's file keeps 3 per-frame items for its one frame: as shipped it is an error row naming
    # the file (it was an internal error); its first item is the frame's.
    (bad,) = run(_copy(LIVER, tmp_path / "bad" / "g" / "liver.dcm"), tmp_path / "b").rows
    assert bad.status == "error" and keyed("g/liver.dcm") in bad.reason
    assert "(5200,9230) PerFrameFunctionalGroupsSequence has 3 item(s) for 1 frame(s)" in bad.reason
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:1]
    ds.NumberOfFrames = 1
    pixels = ds.pixel_array
    # The same segmentation over 510x510 frames: one pixel cropped on each side, the position moved with it.
    crop = copy.deepcopy(ds)
    item = crop.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    sp = [float(v) for v in crop.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    item.ImagePositionPatient = [float(item.ImagePositionPatient[0]) + sp[1],
                                 float(item.ImagePositionPatient[1]) + sp[0], float(item.ImagePositionPatient[2])]
    crop.Rows = crop.Columns = 510
    crop.PixelData = pack_bits(pixels[1:511, 1:511])
    g = tmp_path / "in" / "g"
    files = [_variant(ds, g / "a.dcm"), _variant(ds, g / "b.dcm", RLE_LOSSLESS),
             _variant(ds, g / "c.dcm", DEFLATED_IMAGE_FRAME), _variant(crop, g / "d.dcm")]
    summary = run(tmp_path / "in", tmp_path)
    rows = sorted(summary.rows, key=lambda r: r.series_key)
    assert [r.status for r in rows] == ["ok"] * 4, [r.reason for r in rows]
    liver = int(next(k for k, v in summary.labels.items() if v == "liver"))
    for row, path in zip(rows, files, strict=True):
        assert keyed(f"g/{path.name}") in row.reason and row.label_layout == "labelmap"
        want = pydicom.dcmread(files[3] if path is files[3] else files[0])  # uncompressed: pydicom decodes it
        img = nib.load(tmp_path / "ds" / row.label_path)
        data = np.asarray(img.dataobj)
        assert data.shape == (want.Columns, want.Rows, 1)
        ipp = np.asarray(want.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient, float)
        rr, cc = np.mgrid[0:want.Rows, 0:want.Columns]
        idx = np.rint(to_voxel(img, ipp + cc[..., None] * sp[1] * np.r_[1.0, 0, 0] + rr[..., None] * sp[0] * np.r_[0, 1.0, 0]))
        idx = idx.astype(int)
        np.testing.assert_array_equal(data[idx[..., 0], idx[..., 1], idx[..., 2]], (want.pixel_array > 0) * liver)
    assert (np.asarray(nib.load(tmp_path / "ds" / rows[0].label_path).dataobj) > 0).sum() == (pixels > 0).sum() == 36233


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst.parents[1]
