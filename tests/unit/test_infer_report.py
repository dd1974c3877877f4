"""Batch driver pieces: shard partition, done/error markers, merged reports, volumes, overlay.

The batch itself runs on a dataset made by the real ingest of pydicom-written
series, with a fixed threshold network (the right mask is known: the phantom ball).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.catalog import read_catalog
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.keys import Pseudonymizer
from imaging.pipelines.infer.batch import BatchRunner, BatchSettings
from imaging.pipelines.infer.inputs import shard_keys
from imaging.pipelines.infer.report import ReportRow, label_volumes, read_report
from imaging.pipelines.infer.resume import ModelInfo, is_done, merge_reports, record
from imaging.pipelines.ingest import ingest
from imaging.review.overlay import overlay_montage
from tests.unit.test_infer_predict import threshold_net
from tests.unit.test_seg_writer import write_source

MODEL = ModelInfo("thresh", "2", "champion", {0: "background", 1: "liver"})
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
       "intensity": {"kind": "window", "a_min": -500, "a_max": 200, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [16, 16, 16]}
PSEUDO = Pseudonymizer(b"unit-test-secret-0123456789")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 31])
def test_shards_partition_every_key_once(n: int) -> None:
    keys = [f"{i:04x}" for i in range(n)]
    shards = [shard_keys(list(reversed(keys)), i, 3) for i in range(3)]
    flat = [k for s in shards for k in s]
    assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))
    assert shards == [shard_keys(keys, i, 3) for i in range(3)]  # input order does not matter
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_label_volumes_ml() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2, :5, :4] = 1  # 40 voxels
    affine = np.diag([0.5, 0.8, 2.5, 1])  # 1 mm^3 per voxel
    voxels, ml = label_volumes(labels, affine, {0: "background", 1: "liver", 2: "spleen"})
    assert voxels == {"liver": 40, "spleen": 0}
    assert ml == {"liver": pytest.approx(0.04), "spleen": 0.0}


def test_markers_and_merge_no_duplicates(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "seg.nii.gz").write_bytes(b"x")
    record(tmp_path, ReportRow("a", "s1", "ok", model_name="thresh", model_version="2",
                                voxels={"liver": 3}, volume_ml={"liver": 0.1}), ["seg.nii.gz"])
    record(tmp_path, ReportRow("b", "s1", "error", "read: boom", model_name="thresh", model_version="2"))
    path, complete = merge_reports(tmp_path, keys, MODEL)
    assert not complete and [r["series_key"] for r in read_report(path)] == ["a", "b"]
    assert is_done(tmp_path, "a", MODEL) and not is_done(tmp_path, "b", MODEL)
    assert not is_done(tmp_path, "a", ModelInfo("thresh", "3"))  # another version: predict again
    # b succeeds on a re-run: its error marker goes, the report has it once, as ok.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "seg.nii.gz").write_bytes(b"x")
    record(tmp_path, ReportRow("b", "s1", "ok", model_name="thresh", model_version="2"), ["seg.nii.gz"])
    record(tmp_path, ReportRow("c", "s2", "ok", model_name="thresh", model_version="2"), ["seg.nii.gz"])
    path, complete = merge_reports(tmp_path, keys, MODEL)
    rows = read_report(path)
    assert complete and [(r["series_key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("c", "ok")]
    assert rows[0]["volume_ml_liver"] == "0.1" and not (tmp_path / "errors" / "b.json").exists()
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["complete"] is True
    (tmp_path / "c" / "seg.nii.gz").unlink(missing_ok=True)
    assert not is_done(tmp_path, "c", MODEL)  # its outputs are gone: not done


def test_overlay_png(tmp_path: Path) -> None:
    image = np.random.default_rng(0).normal(0, 50, (20, 20, 8))
    labels = np.zeros((20, 20, 8), np.uint8)
    labels[5:10, 5:12, 2:6] = 1
    overlay_montage(tmp_path / "o.png", image, labels, np.diag([-1.0, -1, 2, 1]), {1: "liver"}, (-100, 100))
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_panels_radiological_view_whatever_the_voxel_order() -> None:
    """A label at the patient's right-anterior lands top-left in every panel, in its palette colour,
    whether the volume is stored LPS (DICOM order) or RAS; pixels are square in millimetres."""
    from imaging.palette import label_colour
    from imaging.review.overlay import overlay_panels

    # world (RAS, mm): a 12 x 12 mm box at x in [6, 18) (right), y in [6, 18) (anterior), z in [0, 8)
    shape, zoom = (40, 20, 10), (1.0, 2.0, 2.0)  # 40 x 40 mm in plane, anisotropic voxels
    ras = np.diag([*zoom, 1.0])
    ras[:3, 3] = [-20.0, -20.0, -10.0]
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = [20.0 - zoom[0], 20.0 - zoom[1]]  # voxel 0 at the other end: the same world box

    def volume(affine):
        idx = np.indices(shape).reshape(3, -1).T
        xyz = idx * np.diag(affine)[:3] + affine[:3, 3]
        inside = np.all((xyz >= [6, 6, 0]) & (xyz < [18, 18, 8]), axis=1)
        return inside.reshape(shape).astype(np.uint8)

    results = []
    for affine in (ras, lps):
        labels = volume(affine)
        ks, panels, present = overlay_panels(np.zeros(shape), labels, affine, {1: "liver"}, window=(0, 1))
        assert present == ["liver"] and len(panels) == len(ks) >= 1
        panel = panels[0]
        assert panel.shape[0] == panel.shape[1]  # 40 x 40 mm: square, though voxels are 1 x 2 mm
        on = np.argwhere(panel.any(axis=2))
        h = panel.shape[0]
        assert on[:, 0].max() < h / 2 and on[:, 1].max() < h / 2  # top (anterior), left (patient right)
        colour = np.array([int(label_colour(1)[i:i + 2], 16) for i in (1, 3, 5)])
        assert np.allclose(panel[tuple(on[0])], 0.45 * colour, atol=1.5)
        results.append(panel)
    assert np.array_equal(results[0], results[1])


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    for kind in ("axial", "oblique", "feet_first", "tilt"):
        write_source(tmp_path / "export" / kind, kind, rows=32, cols=32, patient=kind).unlink()
    ingest(tmp_path / "export", tmp_path / "ds", PSEUDO, progress=False)
    return tmp_path / "ds"


def _settings(ds: Path, out: Path, index: int = 0, count: int = 1) -> BatchSettings:
    return BatchSettings(dataset_dir=ds, output_dir=out, private_dir=ds.with_name("ds.private"),
                         shard_index=index, shard_count=count, segments={}, window=(-500, 200))


def test_batch_shards_resume_and_isolate(dataset: Path, tmp_path: Path) -> None:
    predictor = SeriesPredictor(threshold_net(), PRE, InferenceOptions(device="cpu", sw_batch_size=2))
    catalog = read_catalog(dataset)
    out = tmp_path / "out"
    broken = sorted(r.series_key for r in catalog)[1]
    vol = dataset / "volumes" / f"{broken}.nii.gz"
    good_bytes = vol.read_bytes()
    vol.write_bytes(good_bytes[:100])
    results = [BatchRunner(predictor, MODEL, _settings(dataset, out, i, 3), PSEUDO).run(catalog) for i in range(3)]
    assert sum(r.n_total for r in results) == len(catalog) == 4
    assert results[-1].merged_complete and sum(r.n_error for r in results) == 1
    rows = {r["series_key"]: r for r in read_report(out / "report.csv")}
    assert rows[broken]["status"] == "error" and f"volumes/{broken}.nii.gz" in rows[broken]["reason"]
    for key, row in rows.items():
        if key == broken:
            continue
        assert row["status"] == "ok" and row["shard"].endswith("/3")
        assert {p.name for p in (out / key).iterdir()} == {"seg.nii.gz", "seg.dcm", "overlay.png"}
        # The ball (radius 12 mm) is found: about 7.2 mL whatever the source geometry.
        assert 4.0 < float(row["volume_ml_liver"]) < 10.0, row
        src = nib.load(str(dataset / "volumes" / f"{key}.nii.gz"))
        assert np.allclose(nib.load(str(out / key / "seg.nii.gz")).affine, src.affine)
    # Re-run everything in one shard after fixing the volume: only the failed series runs again.
    vol.write_bytes(good_bytes)
    again = BatchRunner(predictor, MODEL, _settings(dataset, out), PSEUDO).run(catalog)
    assert (again.n_skipped_done, again.n_ok, again.n_error) == (3, 1, 0)
    rows = read_report(out / "report.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert not list((out / "errors").glob("*.json"))


def test_missing_source_dicom_is_an_error_without_paths(dataset: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level("WARNING")
    predictor = SeriesPredictor(threshold_net(), PRE, InferenceOptions(device="cpu", sw_batch_size=2))
    catalog = read_catalog(dataset)
    key = sorted(r.series_key for r in catalog)[0]
    spec = json.loads((dataset.with_name("ds.private") / "sources" / f"{key}.json").read_text())
    Path(spec["files"][0]).unlink()  # the export moved or was cleaned up since ingest
    out = tmp_path / "out"
    result = BatchRunner(predictor, MODEL, _settings(dataset, out), PSEUDO).run(catalog)
    assert (result.n_ok, result.n_error) == (len(catalog) - 1, 1)
    row = next(r for r in read_report(out / "report.csv") if r["series_key"] == key)
    assert row["status"] == "error" and row["reason"].startswith("seg: the source DICOM")
    assert str(tmp_path) not in row["reason"]  # private source paths stay out of the public report
    assert not (out / "done" / f"{key}.json").exists()
    # the log (the console) names the series by key; the details (private paths) are in the private errors.jsonl only
    details = [r for r in caplog.records if "source DICOM unreadable" in r.getMessage()]
    assert len(details) == 1 and details[0].name == "imaging.pipelines.infer.writers"
    assert spec["files"][0] not in details[0].getMessage() and key in details[0].getMessage()
    errors = (dataset.with_name("ds.private") / "errors.jsonl").read_text(encoding="utf-8").splitlines()
    assert any(spec["files"][0] in json.loads(line)["message"] for line in errors)


def test_overlay_panels_of_a_sagittal_volume_keep_millimetre_proportions() -> None:
    """Voxel axes i->A, j->S, k->R (a sagittal stack, a 3-cycle of the RAS axes): the axial
    panel is 20 mm (R-L) by 40 mm (A-P), so its width is half its height."""
    from imaging.review.overlay import overlay_panels

    shape = (40, 30, 10)  # i: A-P, 40 x 1 mm; j: S-I, 30 x 1 mm; k: R-L, 10 x 2 mm
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 0], affine[2, 1], affine[3, 3] = 2.0, 1.0, 1.0, 1.0
    labels = np.zeros(shape, np.uint8)
    labels[30:, 10:20, 8:] = 1  # anterior (high i), right (high k: +x is R)
    ks, panels, _ = overlay_panels(np.zeros(shape), labels, affine, {1: "liver"}, window=(0, 1))
    h, w = panels[0].shape[:2]
    assert (h, w) == (224, 112)
    on = np.argwhere(panels[0].any(axis=2))
    assert on[:, 0].max() < h / 2 and on[:, 1].max() < w / 2  # top (anterior), left (patient right)
