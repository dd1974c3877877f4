"""Outputs: idempotent re-run, atomic writes, keyed pseudonyms only, private side, labels, CLI."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from imaging.keys import Pseudonymizer
from imaging.pipelines.ingest import ingest
from tests.fixtures.datasets import stack_positions, write_slices

PS = Pseudonymizer(b"unit-test-secret-0123456789")
PATIENT = "CANARY-PID-77"


def run(export: Path, tmp: Path, **kw):
    return ingest(export, tmp / "ds", PS, private_dir=tmp / "private", workers=1, progress=False, **kw)


def _export(root: Path) -> tuple[str, list]:
    uid = generate_uid()
    slices = write_slices(root / "in" / "s", stack_positions(4), series_uid=uid, patient_id=PATIENT,
                          extra={"PatientAge": "042Y", "PatientSex": "F", "KVP": 120.0})
    return uid, slices


def test_rerun_skips_done_volumes_and_rewrites_catalog(tmp_path: Path) -> None:
    _export(tmp_path)
    first = run(tmp_path / "in", tmp_path)
    (row,) = first.rows
    vol = tmp_path / "ds" / row.volume_path
    mtime = vol.stat().st_mtime_ns
    catalog = (tmp_path / "ds" / "catalog.csv").read_text()
    (tmp_path / "ds" / "catalog.csv").unlink()
    second = run(tmp_path / "in", tmp_path)
    assert (second.n_written, second.n_reused) == (0, 1)
    assert second.scan.n_cached == 4 and second.scan.n_read == 0
    assert vol.stat().st_mtime_ns == mtime
    assert (tmp_path / "ds" / "catalog.csv").read_text() == catalog
    # A changed source file changes the fingerprint: the volume is rebuilt.
    f = tmp_path / "in" / "s" / "IM0001"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    third = run(tmp_path / "in", tmp_path)
    assert (third.n_written, third.n_reused) == (1, 0) and third.scan.n_read == 1


def test_keys_are_keyed_hashes_and_no_phi_in_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uid, slices = _export(tmp_path)
    ds0 = pydicom.dcmread(slices[0].path)
    caplog.set_level(logging.DEBUG)
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert row.series_key == PS.key(uid, "series")
    assert row.subject_key == PS.key(PATIENT, "subject")
    assert row.study_key == PS.key(ds0.StudyInstanceUID, "study")
    secrets = [uid, PATIENT, ds0.StudyInstanceUID, ds0.SOPInstanceUID, "CANARY", "042Y"]
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            if path.suffix == ".gz":
                img = nib.load(path)
                blob = img.header.binaryblock + b"".join(e.get_content() for e in img.header.extensions)
            for s in secrets:
                assert s.encode() not in blob, (path.name, s)
    for record in caplog.records:
        for s in secrets[:4]:
            assert s not in record.getMessage()
    links = tmp_path / "private" / "links.csv"
    assert stat.S_IMODE(links.stat().st_mode) == 0o600
    assert uid in links.read_text() and PATIENT in links.read_text()
    assert not list((tmp_path / "ds").rglob("*.tmp*"))
    assert nib.load(tmp_path / "ds" / row.volume_path).header["descrip"].tobytes().rstrip(b"\0") == b"imaging ingest"


def test_sidecar_and_sources(tmp_path: Path) -> None:
    uid, slices = _export(tmp_path)
    (row,) = run(tmp_path / "in", tmp_path).rows
    sidecar = json.loads((tmp_path / "ds" / "volumes" / f"{row.series_key}.json").read_text())
    assert sidecar["Modality"] == "CT" and sidecar["KVP"] == 120.0 and sidecar["Manufacturer"] == "TestVendor"
    assert sidecar["NumberOfInstances"] == 4 and sidecar["TransferSyntax"] == "Explicit VR Little Endian"
    assert "PatientAge" not in sidecar and "PatientSex" not in sidecar
    src = json.loads((tmp_path / "private" / "sources" / f"{row.series_key}.json").read_text())
    assert src["files"] == [str(s.path) for s in slices]  # already in k order
    assert src["frames"] == [[k, 1] for k in range(4)] and src["series_instance_uid"] == uid


def test_patient_characteristics_only_when_asked(tmp_path: Path) -> None:
    _export(tmp_path)
    (row,) = run(tmp_path / "in", tmp_path, keep_patient_characteristics=True).rows
    sidecar = json.loads((tmp_path / "ds" / "volumes" / f"{row.series_key}.json").read_text())
    assert sidecar["PatientAge"] == "042Y" and sidecar["PatientSex"] == "F"


def test_private_dir_inside_dataset_refused(tmp_path: Path) -> None:
    _export(tmp_path)
    with pytest.raises(ValueError, match="private_dir"):
        ingest(tmp_path / "in", tmp_path / "ds", PS, private_dir=tmp_path / "ds" / "private", progress=False)


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    uid, _ = _export(tmp_path)
    key = PS.key(uid, "series")
    (tmp_path / "ds" / "volumes" / f"{key}.nii.gz").mkdir(parents=True)  # os.replace onto a folder fails
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert row.status == "error" and "internal error" in row.reason and summary.failed
    assert [p.name for p in (tmp_path / "ds" / "volumes").iterdir()] == [f"{key}.nii.gz"]


def _seg_for(slices, path: Path, masks: dict[str, np.ndarray]) -> None:
    srcs = [pydicom.dcmread(s.path) for s in slices]
    descs = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n, name in enumerate(masks, start=1)]
    arr = np.stack(list(masks.values()), axis=-1).astype(np.uint8)  # (frames, rows, cols, segments)
    seg = hd.seg.Segmentation(
        source_images=srcs, pixel_array=arr, segmentation_type="BINARY", segment_descriptions=descs,
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="t", manufacturer_model_name="t", software_versions="1", device_serial_number="1")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def test_dicom_seg_becomes_label_map_on_volume_grid(tmp_path: Path) -> None:
    pos = stack_positions(4)
    order = [2, 0, 3, 1]
    extra = {"FrameOfReferenceUID": generate_uid(), "StudyDate": "20200101", "StudyTime": "1200",
             "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "", "PatientBirthDate": "",
             "PatientSex": "O", "PatientName": "Doe^Jane"}
    slices = write_slices(tmp_path / "in" / "s", [pos[i] for i in order], extra=extra)
    liver = np.zeros((4, 6, 7), bool)
    liver[0, 1:3, 2:5] = True  # file 0 = slice k 2
    spleen = np.zeros((4, 6, 7), bool)
    spleen[3, 4, 6] = True  # file 3 = slice k 1
    _seg_for(slices, tmp_path / "in" / "seg" / "seg.dcm", {"Liver": liver, "Spleen": spleen})
    summary = run(tmp_path / "in", tmp_path)
    ok = next(r for r in summary.rows if r.status == "ok")
    seg_row = next(r for r in summary.rows if r.status == "skipped")
    assert "seg" in seg_row.reason.lower() and ok.series_key in seg_row.reason
    assert summary.labels == {"0": "background", "1": "liver", "2": "spleen"}
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["labels"] == summary.labels
    lab = nib.load(tmp_path / "ds" / ok.label_path)
    np.testing.assert_allclose(lab.affine, nib.load(tmp_path / "ds" / ok.volume_path).affine)
    data = np.asarray(lab.dataobj)
    expected = np.zeros((7, 6, 4), np.uint8)
    expected[2:5, 1:3, 2] = 1
    expected[6, 4, 1] = 2
    np.testing.assert_array_equal(data, expected)


def test_nifti_labels_resampled_by_world_coordinates(tmp_path: Path) -> None:
    uid, slices = _export(tmp_path)
    first = run(tmp_path / "in", tmp_path)  # learn the grid, then write ground truth in another voxel order
    img = nib.load(tmp_path / "ds" / first.rows[0].volume_path)
    lab = np.zeros(img.shape, np.uint8)
    lab[1:3, 2:4, 1] = 1
    lab[5, 0, 3] = 2
    flipped = nib.Nifti1Image(lab[::-1, :, ::-1].copy(), img.affine @ np.array(
        [[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, img.shape[2] - 1], [0, 0, 0, 1]]))
    (tmp_path / "in" / "labels").mkdir()
    nib.save(flipped, tmp_path / "in" / "labels" / f"{uid}.nii.gz")
    (tmp_path / "in" / "labels" / "labels.json").write_text('{"1": "Liver", "2": "Kidney"}')
    summary = run(tmp_path / "in", tmp_path)
    (row,) = summary.rows
    assert summary.n_written == 1  # the new label file changed the fingerprint
    assert summary.labels == {"0": "background", "1": "liver", "2": "kidney"}
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "ds" / row.label_path).dataobj), lab)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imaging.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, cwd=Path(__file__).parents[2])


def test_cli_exit_codes(tmp_path: Path) -> None:
    _export(tmp_path)
    common = [f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}",
              "progress=false"]
    no_secret = _cli("ingest", *common, env={"IMAGING_DEID_SECRET": ""})
    assert no_secret.returncode == 2 and "secret" in no_secret.stderr
    assert _cli("secret", "new", str(tmp_path / "secret")).returncode == 0
    ok = _cli("ingest", *common, f"secret_file={tmp_path / 'secret'}")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and (tmp_path / "out.private" / "index.sqlite").is_file()
    (tmp_path / "in" / "s" / "IM0002").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 10)
    failed = _cli("ingest", *common, f"secret_file={tmp_path / 'secret'}")
    assert failed.returncode == 1 and "error" in failed.stdout


def test_outputs_inside_the_export_are_not_scanned(tmp_path: Path) -> None:
    _export(tmp_path)
    src = tmp_path / "in"
    first = ingest(src, src / "dataset", PS, private_dir=src / "private", workers=1, progress=False)
    second = ingest(src, src / "dataset", PS, private_dir=src / "private", workers=1, progress=False)
    assert first.scan.n_files == second.scan.n_files == 4 and second.scan.n_non_dicom == 0
    assert [r.status for r in second.rows] == ["ok"] and second.n_reused == 1
