"""Ingest the synthetic export (every tricky case) and check it against the DICOM and dcm2niix.

- every manifest series gets its expected status, reason, shape and timepoints;
- every ok volume agrees with its DICOM in world coordinates: for each source
  slice, voxels of the output slice at the same normal coordinate hold the
  source image sampled (bilinearly) at the voxel's world position;
- dcm2niix is an oracle on the non-tilted, evenly spaced cases: same geometry
  and intensities after both are put in canonical (RAS) voxel order;
- ground truth (SEG or NIfTI) lands on the same voxels as the generator's labels;
- no PHI canary or raw UID reaches the dataset.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from imaging.dicom.catalog import read_catalog
from imaging.keys import Pseudonymizer
from tests.fixtures.datasets import IngestedDataset

pytestmark = pytest.mark.integration
PS = Pseudonymizer.from_config(demo_key=True)
NOT_FOR_ORACLE = ("tilt", "uneven_spacing", "missing_slice", "truncated")


@pytest.fixture(scope="module")
def manifest(ingested_dataset: IngestedDataset) -> dict[str, Any]:
    return json.loads((ingested_dataset.export / "manifest.json").read_text())


@pytest.fixture(scope="module")
def rows(ingested_dataset: IngestedDataset) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in read_catalog(ingested_dataset.dataset):
        out.setdefault(r.series_key.split("_")[0], []).append(r)
    return out


def _ok_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in manifest["series"] if e["expected"]["status"] == "ok"]


def test_every_manifest_series_gets_its_expected_outcome(manifest, rows) -> None:
    assert len(manifest["series"]) >= 30
    for e in manifest["series"]:
        ex, key = e["expected"], PS.key(e["series_instance_uid"], "series")
        got = rows.get(key, [])
        assert got, (e["flags"], "no catalog row")
        assert {r.status for r in got} == {ex["status"]}, (e["flags"], [(r.status, r.reason) for r in got])
        if ex["reason_contains"]:
            assert any(ex["reason_contains"].lower() in r.reason.lower() for r in got), (e["flags"], got[0].reason)
        if ex["status"] == "ok":
            assert len(got) == ex["n_volumes"], e["flags"]
            if ex["shape"]:
                assert got[0].shape.split("x")[:3] == [str(v) for v in ex["shape"]], e["flags"]
            assert got[0].n_timepoints == (ex["timepoints"] or 1), e["flags"]


def test_bad_files_are_rows_naming_file_and_tag(ingested_dataset: IngestedDataset) -> None:
    summary = ingested_dataset.summary
    errors = [r.reason for r in summary.rows if r.status == "error"]
    # Files are named by keyed hash (folder names may be patients'), never by path.
    assert any("truncated" in e and "(7FE0,0010)" in e and e.startswith("file file-") for e in errors)
    assert not any("DICOM/" in e for e in errors)
    assert any("(0020,0037) ImageOrientationPatient" in e for e in errors)
    assert any("(0002,0010) TransferSyntaxUID = '" in e for e in errors)
    assert summary.scan.n_non_dicom >= 2 and summary.failed


def _source_slices(export: Path, entry: dict[str, Any]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(timepoint, world position of every pixel (rows, cols, 3), modality values) per source slice."""
    files = entry["files"]
    t_n = entry["expected"]["timepoints"] or 1
    per_t = max(len(files) // t_n, 1)
    out = []
    for idx, name in enumerate(files):
        ds = pydicom.dcmread(export / name)
        try:
            pixels = ds.pixel_array.astype(float)
        except ValueError:
            assert "truncated" in entry["flags"], (name, entry["flags"])
            continue
        frames = pixels if int(ds.get("NumberOfFrames", 1)) > 1 else pixels[None]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
        for f, arr in enumerate(frames):
            if per_frame is not None:
                item = per_frame[f]
                ipp = item.PlanePositionSequence[0].ImagePositionPatient
                iop = (item if "PlaneOrientationSequence" in item else shared).PlaneOrientationSequence[0].ImageOrientationPatient
                sp = (item if "PixelMeasuresSequence" in item else shared).PixelMeasuresSequence[0].PixelSpacing
                slope, icpt = 1.0, 0.0
            else:
                ipp, iop, sp = ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
                slope, icpt = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            r_dir, c_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
            rr, cc = np.mgrid[0:arr.shape[0], 0:arr.shape[1]]
            world = (np.asarray(ipp, float) + cc[..., None] * float(sp[1]) * r_dir
                     + rr[..., None] * float(sp[0]) * c_dir)
            out.append((idx // per_t, world, arr * slope + icpt))
    return out


def _bilinear(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    r1, c1 = np.minimum(r0 + 1, img.shape[0] - 1), np.minimum(c0 + 1, img.shape[1] - 1)
    wr, wc = r - r0, c - c0
    return ((1 - wr) * (1 - wc) * img[r0, c0] + (1 - wr) * wc * img[r0, c1]
            + wr * (1 - wc) * img[r1, c0] + wr * wc * img[r1, c1])


def test_ok_volumes_agree_with_the_dicom_in_world_coordinates(ingested_dataset, manifest, rows) -> None:
    checked = 0
    for e in _ok_entries(manifest):
        (row,) = rows[PS.key(e["series_instance_uid"], "series")]
        img = nib.load(ingested_dataset.dataset / row.volume_path)
        data = np.asarray(img.dataobj).astype(float)
        if data.ndim == 3:
            data = data[..., None]
        inv = np.linalg.inv(img.affine)
        resampled = bool(row.reason)
        hits = 0
        for t, world, values in _source_slices(ingested_dataset.export, e):
            ras = np.concatenate([world * [-1, -1, 1], np.ones((*world.shape[:2], 1))], axis=-1)
            ijk = ras @ inv.T
            k = ijk[0, 0, 2]
            if abs(k - round(k)) > 1e-3:  # this source slice is between output slices (uneven)
                continue
            hits += 1
            i, j = ijk[..., 0], ijk[..., 1]
            if not resampled:  # same grid: every pixel is a voxel, exactly
                np.testing.assert_allclose(i, np.rint(i), atol=1e-3)
                np.testing.assert_allclose(j, np.rint(j), atol=1e-3)
                got = data[np.rint(i).astype(int), np.rint(j).astype(int), int(round(k)), t]
                np.testing.assert_allclose(got, values, atol=1e-3, err_msg=str(e["flags"]))
                continue
            # Resampled (tilt): output voxel (x, y, k) lies in this source plane; sample the source there.
            xs, ys = np.meshgrid(np.arange(0, data.shape[0], 5), np.arange(0, data.shape[1], 5), indexing="ij")
            pts = np.stack([xs, ys, np.full_like(xs, round(k)), np.ones_like(xs)], axis=-1) @ img.affine.T
            lps = pts[..., :3] * [-1, -1, 1]
            origin, r_vec, c_vec = world[0, 0], world[0, 1] - world[0, 0], world[1, 0] - world[0, 0]
            col = (lps - origin) @ r_vec / (r_vec @ r_vec)
            rowf = (lps - origin) @ c_vec / (c_vec @ c_vec)
            inside = (col >= 0) & (col <= values.shape[1] - 1) & (rowf >= 0) & (rowf <= values.shape[0] - 1)
            expected = _bilinear(values, rowf[inside], col[inside])
            np.testing.assert_allclose(data[xs[inside], ys[inside], round(k), t], expected, atol=1.01,
                                       err_msg=str(e["flags"]))
        assert hits >= len(e["files"]) // 2, e["flags"]
        checked += 1
    # (24 since uneven and missing-slice series are error rows by default: uneven=refuse)
    assert checked == len(_ok_entries(manifest)) >= 24


@pytest.fixture(scope="module")
def dcm2niix_out(synth_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = Path(sys.executable).parent / "dcm2niix"
    exe_str = str(exe) if exe.exists() else shutil.which("dcm2niix")
    assert exe_str, "dcm2niix (pip package dcm2niix) is required for the oracle test"
    out = tmp_path_factory.mktemp("dcm2niix")
    # Non-zero exit: it could not convert some of the deliberately broken series.
    subprocess.run([exe_str, "-z", "y", "-b", "n", "-f", "%j_%s", "-o", str(out), str(synth_export / "DICOM")],
                   capture_output=True, timeout=300)
    return out


def test_dcm2niix_oracle_same_geometry_and_intensities(ingested_dataset, manifest, rows, dcm2niix_out) -> None:
    compared = 0
    for e in _ok_entries(manifest):
        if any(f.startswith(NOT_FOR_ORACLE) for f in e["flags"]):
            continue  # where we resample, the DICOM (previous test) is the truth, not dcm2niix
        (row,) = rows[PS.key(e["series_instance_uid"], "series")]
        ours = nib.as_closest_canonical(nib.load(ingested_dataset.dataset / row.volume_path))
        theirs = sorted(dcm2niix_out.glob(f"{e['series_instance_uid']}_*.nii.gz"))
        ours_data = np.asarray(ours.dataobj)
        ours_t = [ours_data] if ours_data.ndim == 3 else [ours_data[..., t] for t in range(ours_data.shape[3])]
        assert len(theirs) == len(ours_t), (e["flags"], [p.name for p in theirs])
        for ours_vol, path in zip(ours_t, theirs, strict=True):
            ref = nib.as_closest_canonical(nib.load(path))
            np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3, err_msg=str(e["flags"]))
            ref_data = np.asarray(ref.dataobj)
            ref_data = ref_data[..., 0] if ref_data.ndim == 4 and ref_data.shape[3] == 1 else ref_data
            np.testing.assert_array_equal(ours_vol, ref_data, err_msg=str(e["flags"]))
        compared += 1
    assert compared >= 20


def test_ground_truth_on_the_generators_voxels(ingested_dataset, manifest, rows) -> None:
    labels = json.loads((ingested_dataset.dataset / "dataset.json").read_text())["labels"]
    assert labels == manifest["labels"]  # names in labels/labels.json and the SEGs agree: no "label N"
    checked = 0
    for e in _ok_entries(manifest):
        if not e.get("labels"):
            continue
        (row,) = rows[PS.key(e["series_instance_uid"], "series")]
        assert row.label_path, e["flags"]
        ours = nib.load(ingested_dataset.dataset / row.label_path)
        np.testing.assert_allclose(ours.affine, nib.load(ingested_dataset.dataset / row.volume_path).affine)
        truth_img = nib.load(ingested_dataset.export / e["labels"]["nifti"])
        got = np.asarray(ours.dataobj)
        if row.reason:  # resampled grid (tilt, uneven): compare in world coordinates, nibabel's resampler
            from nibabel.processing import resample_from_to

            truth = np.asarray(resample_from_to(truth_img, ours, order=0).dataobj)
            assert np.mean((got > 0) == (truth > 0)) > 0.99, e["flags"]
            checked += 1
            continue
        truth = np.asarray(truth_img.dataobj)
        np.testing.assert_array_equal(got > 0, truth > 0, err_msg=str(e["flags"]))
        # SEG segment labels and labels/labels.json name the values: each organ gets the
        # dataset-wide integer of its name, whichever way its ground truth came.
        for value, name in e["labels"]["values"].items():
            want = int(next(k for k, v in labels.items() if v == name.lower()))
            assert np.all(got[truth == int(value)] == want), (e["flags"], name)
        checked += 1
    assert checked >= 4


def test_no_phi_in_the_dataset(ingested_dataset, manifest) -> None:
    needles = [c for c in manifest["canaries"] if len(c) >= 6] + [u for u in manifest["uids"]]
    needles += [manifest["canary_token"]]
    for path in ingested_dataset.dataset.rglob("*"):
        if not path.is_file():
            continue
        blob = path.read_bytes()
        if path.name.endswith(".nii.gz"):
            blob = nib.load(path).header.binaryblock
        text = blob.decode("latin-1")
        for needle in needles:
            assert needle not in text, (path.name, needle)
    assert not (ingested_dataset.dataset / "index.sqlite").exists()
    assert (ingested_dataset.private / "index.sqlite").is_file()
