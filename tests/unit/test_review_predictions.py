"""Reviewing an inference output: report tables, volume plots, best/worst cases, case views.

The output is written with the real writers (``imaging.pipelines.infer.report``), the dataset
in the ingest contract; the dataset numbers its labels differently from the model
(spleen=1, liver=2 vs liver=1, spleen=2), so matching by name is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.dicom.catalog import CatalogRow, write_catalog
from imaging.pipelines.infer.report import ReportRow, label_volumes, write_report
from imaging.review.predictions import (
    case_scores,
    case_views,
    failures,
    label_names,
    load_report,
    prediction_paths,
    report_summary,
    status_and_timing,
    volume_distributions,
    volumes_long,
    worst_and_best,
)

MODEL = {0: "background", 1: "liver", 2: "spleen"}
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])
SHAPE = (16, 14, 10)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """(model-numbered truth, dataset-numbered truth) of the same anatomy."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:9, 3:10, 2:8] = 1  # liver
    truth[10:14, 4:8, 3:6] = 2  # spleen
    return truth, np.select([truth == 1, truth == 2], [2, 1], 0).astype(np.uint8)


@pytest.fixture()
def output(tmp_path: Path) -> Path:
    out = tmp_path / "pred"
    ds = out / "work" / "dataset"
    (ds / "volumes").mkdir(parents=True)
    (ds / "labels").mkdir()
    (tmp_path / "pred.private" / "sources").mkdir(parents=True)
    truth, truth_ds = _masks()
    preds = {
        "good": truth,  # perfect
        "fair": np.roll(truth, 2, axis=0),  # shifted by 4 mm
        "nolabel": truth,  # no reference in the dataset
    }
    rows, report = [], []
    for key, pred in preds.items():
        image = np.where(truth > 0, 60.0, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(image, AFFINE), str(ds / "volumes" / f"{key}.nii.gz"))
        label_path = ""
        if key != "nolabel":
            nib.save(nib.Nifti1Image(truth_ds, AFFINE), str(ds / "labels" / f"{key}.nii.gz"))
            label_path = f"labels/{key}.nii.gz"
        rows.append(CatalogRow(key, "sub", "stu", "CT", "ok", volume_path=f"volumes/{key}.nii.gz",
                               label_path=label_path))
        (out / key).mkdir(parents=True)
        nib.save(nib.Nifti1Image(pred, AFFINE), str(out / key / "seg.nii.gz"))
        voxels, ml = label_volumes(pred, AFFINE, MODEL)
        report.append(ReportRow(key, "sub", "ok", model_name="m", model_version="3", t_load=0.1, t_preprocess=0.2,
                                t_infer=1.0, t_write=0.3, seg_frames=5, voxels=voxels, volume_ml=ml))
    report.append(ReportRow("broken", "sub", "error", "ingest error: truncated: (7FE0,0010) PixelData", "m", "3"))
    write_catalog(rows, ds / "catalog.csv")
    (ds / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen", "2": "liver"}}))
    write_report(report, out / "report.csv", ["liver", "spleen"], out / "report.json", {"n_ok": 3, "complete": True})
    return out


def test_paths_and_report(output: Path) -> None:
    paths = prediction_paths(output)
    assert paths.dataset_dir == output / "work" / "dataset"
    assert paths.private_dir == output.with_name("pred.private")
    with pytest.raises(FileNotFoundError, match="no report.csv"):
        prediction_paths(output / "good")
    report = load_report(output)
    assert report["volume_ml_liver"].dtype.kind == "f" and report["series_key"].tolist()[0] == "broken"
    assert np.isnan(report.set_index("series_key").loc["broken", "volume_ml_liver"])
    assert label_names(report) == {1: "liver", 2: "spleen"}
    assert report_summary(output) == {"n_ok": 3, "complete": True}
    liver_ml = 7 * 7 * 6 * 10 / 1000
    long = volumes_long(report)
    assert len(long) == 6 and set(long["label"]) == {"liver", "spleen"}
    assert long[long["label"] == "liver"]["volume_ml"].tolist() == pytest.approx([liver_ml] * 3)
    fails = failures(report)
    assert fails["series_key"].tolist() == ["broken"] and "truncated" in fails["reason"][0]


def test_report_figures(output: Path) -> None:
    report = load_report(output)
    fig = volume_distributions(report)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["liver", "spleen"]
    assert all(ax.get_ylabel() == "predicted volume (mL)" for ax in fig.axes)
    assert "3 ok series" in fig.get_suptitle()
    ax_s, ax_t = status_and_timing(report).axes
    assert [round(p.get_height()) for p in ax_s.patches] == [3, 1]
    assert ax_t.get_xlabel() == "mean time per series (s)"
    assert [round(p.get_width(), 2) for p in ax_t.patches] == [0.1, 0.2, 1.0, 0.3]
    with pytest.raises(ValueError, match="no ok series"):
        volume_distributions(report[report["status"] != "ok"])


def test_case_scores_match_labels_by_name(output: Path) -> None:
    paths = prediction_paths(output)
    report = load_report(output)
    scores = case_scores(paths, report).set_index("series_key")
    assert scores.loc["good", "dice_liver"] == pytest.approx(1.0)
    assert scores.loc["good", "dice_spleen"] == pytest.approx(1.0)
    # Liver shifted by 2 of its 7 voxels along x: overlap 5/7.
    assert scores.loc["fair", "dice_liver"] == pytest.approx(5 / 7)
    assert np.isnan(scores.loc["nolabel", "dice_mean"])
    worst, best, basis = worst_and_best(scores.reset_index())
    assert (worst, best, basis) == (["fair"], ["good"], "Dice vs reference")
    # Without any reference, the volume outlier score ranks the cases.
    no_ref = scores.reset_index().assign(dice_mean=np.nan)
    assert worst_and_best(no_ref)[2] == "volume outlier (robust z)"


def test_case_views_overlay_prediction_and_reference(output: Path) -> None:
    paths = prediction_paths(output)
    report = load_report(output)
    fig = case_views(paths, report, "fair")
    axial = fig.axes[0]
    assert "reference (contour)" in fig.get_suptitle()
    legend = [t.get_text() for t in axial.get_legend().get_texts()]
    assert legend == ["liver", "spleen", "reference: contour"]
    assert axial.collections, "the reference is drawn as contours"
    # The filled overlay is the prediction (model numbering), not the dataset's label map.
    truth, _ = _masks()
    pred = np.roll(truth, 2, axis=0)
    centre = tuple(int(v) for v in np.argwhere(pred > 0).mean(0).round())
    np.testing.assert_array_equal(np.ma.filled(axial.get_images()[1].get_array(), 0), pred[:, :, centre[2]].T)
    assert "reference" not in case_views(paths, report, "nolabel").get_suptitle()
    with pytest.raises(FileNotFoundError, match="prediction .* is missing"):
        case_views(paths, report, "broken")
