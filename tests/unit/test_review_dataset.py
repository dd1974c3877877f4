"""Dataset review helpers and their figures on a small dataset folder in the ingest contract."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure

from imaging.dicom.catalog import CatalogRow, write_catalog
from imaging.review.dataset import (
    load_catalog,
    load_labels,
    load_volume,
    not_ok,
    ok_remarks,
    pick_volumes,
    reasons_summary,
    short_reason,
    status_counts,
)
from imaging.review.plots import (
    ct_window,
    display_window,
    intensity_histogram,
    intensity_histograms,
    orthoviews,
    status_bars,
)

LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _volume(shape: tuple[int, int, int], hu: float) -> tuple[np.ndarray, np.ndarray]:
    image = np.full(shape, -1000.0, np.float32)
    image[2:-2, 2:-2, 1:-1] = hu
    image += np.random.default_rng(0).normal(0, 20, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:8, 3:6, 2:5] = 1  # an off-centre block: orientation mistakes move it
    label[9:11, 8:10, 3:4] = 2
    return image, label


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    (root / "volumes").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = []
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # stored LPS: load_volume must turn it to RAS
    lps[:3, 3] = [20.0, 20.0, -10.0]
    for i, (modality, hu, affine) in enumerate([("CT", 40.0, np.diag([2.0, 2.0, 3.0, 1.0])), ("CT", 60.0, lps),
                                                ("MR", 700.0, np.diag([1.5, 1.5, 4.0, 1.0]))]):
        image, label = _volume((14, 12, 7), hu)
        key = f"key{i}"
        nib.save(nib.Nifti1Image(image, affine), str(root / "volumes" / f"{key}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"{key}.nii.gz"))
        rows.append(CatalogRow(key, f"sub{i}", f"stu{i}", modality, "ok", "gantry tilt 15.0 deg resampled" if i == 1
                               else "", 7, "14x12x7", "2x2x3", "RAS", f"volumes/{key}.nii.gz", f"labels/{key}.nii.gz"))
    rows += [
        CatalogRow("bad1", "sub9", "stu9", "CT", "error", "file '/export/a/IM1': truncated: (7FE0,0010) PixelData"),
        CatalogRow("bad2", "sub9", "stu9", "CT", "error", "file '/export/b/IM7': truncated: (7FE0,0010) PixelData"),
        CatalogRow("seg1", "sub9", "stu9", "SEG", "skipped", "segmentation (SEG) object: used as ground-truth labels"),
        CatalogRow("sr1", "sub9", "stu9", "", "skipped", "non-image SOP class: (0008,0016) SOPClassUID = 1.2.3"),
    ]
    write_catalog(rows, root / "catalog.csv")
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS}))
    return root


def test_catalog_tables(dataset: Path) -> None:
    cat = load_catalog(dataset)
    assert len(cat) == 7 and cat["n_instances"].dtype.kind == "i"
    counts = status_counts(cat)
    assert counts.loc["CT"].to_dict() == {"ok": 2, "skipped": 0, "error": 2, "total": 4}
    assert counts.loc["(unknown)", "skipped"] == 1 and counts["total"].sum() == 7
    reasons = reasons_summary(cat)
    top = reasons.iloc[0]
    assert (top["status"], top["reason"], top["series"]) == ("error", "truncated: (7FE0,0010) PixelData", 2)
    assert not any("/export" in r for r in not_ok(cat)["reason"]), "file paths must not reach the summary"
    assert set(not_ok(cat)["series_key"]) == {"bad1", "bad2", "seg1", "sr1"}
    assert list(ok_remarks(cat)["remark"]) == ["gantry tilt 15.0 deg resampled"]
    assert short_reason("non-image SOP class: (0008,0016) SOPClassUID = 1.2.3") == \
        "non-image SOP class: (0008,0016) SOPClassUID"
    assert load_labels(dataset) == {0: "background", 1: "liver", 2: "spleen"}


def test_pick_volumes_alternates_modalities(dataset: Path) -> None:
    picked = pick_volumes(load_catalog(dataset), 2)
    assert sorted(picked["modality"]) == ["CT", "MR"]


def test_load_volume_turns_lps_into_ras(dataset: Path) -> None:
    cat = load_catalog(dataset).set_index("series_key", drop=False)
    ras = load_volume(dataset, cat.loc["key0"])
    lps = load_volume(dataset, cat.loc["key1"])
    assert ras.spacing == (2.0, 2.0, 3.0) and lps.spacing == (2.0, 2.0, 3.0)
    # Flipping x and y of the stored array gives the RAS array: the label block moves accordingly.
    np.testing.assert_array_equal(lps.label, ras.label[::-1, ::-1, :])
    assert lps.origin[0] == pytest.approx(20.0 - 2.0 * 13)
    with pytest.raises(ValueError, match="has no volume"):
        load_volume(dataset, cat.loc["bad1"])
    other = dataset / "labels" / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), str(other))
    with pytest.raises(ValueError, match="not on the grid"):
        load_volume(dataset, cat.loc["key0"], label_path=other)


def test_orthoviews_is_readable(dataset: Path) -> None:
    cat = load_catalog(dataset).set_index("series_key", drop=False)
    vol = load_volume(dataset, cat.loc["key0"])
    fig = orthoviews(vol, names=load_labels(dataset), reference=vol.label)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 3
    for ax, plane in zip(axes, ("axial", "coronal", "sagittal"), strict=True):
        assert ax.get_title().startswith(plane)
        assert "(mm)" in ax.get_xlabel() and "(mm)" in ax.get_ylabel()
        assert ax.xaxis_inverted(), "radiological convention: patient right on the viewer's left"
        image, overlay = ax.get_images()[:2]
        assert image.get_cmap().name == "gray"
        assert overlay.get_alpha() == pytest.approx(0.4)
    assert tuple(axes[0].get_images()[0].get_clim()) == ct_window("soft_tissue")
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "HU"
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["liver", "spleen", "reference: contour"]
    # The axial plane goes through the labels' centre and shows the label map there.
    centre_z = int(np.argwhere(vol.label > 0).mean(0).round()[2])
    shown = np.ma.getdata(axes[0].get_images()[1].get_array())
    np.testing.assert_array_equal(np.ma.filled(axes[0].get_images()[1].get_array(), 0), vol.label[:, :, centre_z].T)
    assert shown.shape == (12, 14)
    # Extent in mm: 14 voxels of 2 mm along x.
    left, right, _, _ = axes[0].get_images()[0].get_extent()
    assert abs(right - left) == pytest.approx(28.0)


def test_orthoviews_mr_and_errors(dataset: Path) -> None:
    cat = load_catalog(dataset).set_index("series_key", drop=False)
    vol = load_volume(dataset, cat.loc["key2"])
    fig = orthoviews(vol)
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert cbar.get_ylabel() == "signal intensity (a.u.)"
    with pytest.raises(ValueError, match="differs from the image shape"):
        orthoviews(vol.image, np.zeros((2, 2, 2), np.int16))
    with pytest.raises(ValueError, match="CT window 'brain'"):
        ct_window("brain")
    lo, hi = display_window(vol.image, "MR")
    assert 600 < lo < 700 < hi < 800  # the body's range, not the air


def test_intensity_histograms(dataset: Path) -> None:
    edges, frac = intensity_histogram(np.array([-1000.0, 40.0, 40.0, 3000.0]), "CT", bins=10)
    assert edges[0] == -1024.0 and edges[-1] == 1600.0
    assert frac.sum() == pytest.approx(0.75)  # 3000 HU is outside the shared CT axis
    fig = intensity_histograms(load_catalog(dataset), dataset)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["CT: 2 volume(s)", "MR: 1 volume(s)"]
    assert axes[0].get_xlabel() == "HU" and axes[1].get_xlabel() == "signal intensity (a.u.)"
    assert all(ax.get_yscale() == "log" and ax.get_ylabel() for ax in axes)
    cat = load_catalog(dataset)
    with pytest.raises(ValueError, match="no ok volume"):
        intensity_histograms(cat[cat["status"] != "ok"], dataset)


def test_status_bars(dataset: Path) -> None:
    fig = status_bars(status_counts(load_catalog(dataset)))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "series (count)" and ax.get_xlabel() == "modality" and ax.get_title()
    heights = sorted(round(p.get_height()) for p in ax.patches)
    assert sum(heights) == 7
