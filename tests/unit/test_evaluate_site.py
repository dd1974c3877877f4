"""Cross-site evaluation, the site's side (issue 31): the aggregates a site returns equal
Dice and organ volumes computed independently (plain nibabel + numpy on the predicted
masks and the site's label files), labels are matched by name (a site numbering its
labels differently gets the same figures), and pooling over sites equals one evaluation
over all their cases.

The model is a fixed 1x1x1 convolution that classifies each voxel by its intensity
(nearest organ HU of the synthetic phantoms): no training, deterministic, and Dice well
above zero, so the comparison means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from imaging.data.items import load_dataset_info
from imaging.data.transforms import preprocessing_from_config
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.federated.cross_site import pool
from imaging.federated.evaluation import EvalRequest, class_lookup, evaluate_cases, site_cases
from tests.fixtures.train_data import make_train_dataset

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
HU = {0: 20.0, 1: 60.0, 2: 110.0, 3: 170.0}  # the phantom's body and organ intensities
WINDOW = {"kind": "window", "a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


def intensity_classifier() -> torch.nn.Module:
    """Nearest-centroid voxel classifier: logit_c = 2 mu_c x - mu_c^2 (argmax = nearest mu_c)."""
    conv = torch.nn.Conv3d(1, 4, kernel_size=1)
    mu = torch.tensor([(HU[c] + 200.0) / 500.0 for c in range(4)])
    with torch.no_grad():
        conv.weight.copy_((50 * 2 * mu).view(4, 1, 1, 1, 1))
        conv.bias.copy_(-50 * mu**2)
    return conv


def preprocessing() -> dict:
    data = {"task": "segmentation", "modality": "CT", "patch_size": [16, 16, 8],
            "preprocessing": {"orientation": "RAS", "spacing": [4.0, 4.0, 5.0], "intensity": {"CT": WINDOW}}}
    return preprocessing_from_config(data, {0: 0, 1: 1, 2: 2, 3: 3})


def request(split: str = "all") -> EvalRequest:
    return EvalRequest({"name": "test-conv"}, preprocessing(), LABELS, split, folds=3, fold=0, seed=0,
                       inference={"device": "cpu", "sw_batch_size": 2})


def independent(items: list[dict], relabel: dict[int, int] | None = None) -> dict[str, float]:
    """Dice per label (mean over cases having the organ) and mean volumes in mL, with plain numpy."""
    predictor = SeriesPredictor(intensity_classifier(), preprocessing(), InferenceOptions(device="cpu"))
    dice: dict[int, list[float]] = {c: [] for c in (1, 2, 3)}
    vol: dict[int, float] = {c: 0.0 for c in (1, 2, 3)}
    for item in items:
        pred, _ = predictor.predict(item["image"])
        img = nib.load(item["label"])
        truth = np.asarray(img.dataobj).astype(int)
        if relabel:
            truth = np.vectorize(lambda v: relabel.get(int(v), 0))(truth)
        voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
        for c in (1, 2, 3):
            p, t = pred == c, truth == c
            vol[c] += p.sum() * voxel_ml
            if t.any():
                dice[c].append(2.0 * (p & t).sum() / (p.sum() + t.sum()))
    out = {f"dice_{LABELS[c]}": float(np.mean(v)) for c, v in dice.items() if v}
    out.update({f"volume_pred_ml_{LABELS[c]}": v / len(items) for c, v in vol.items()})
    out.update({f"n_{LABELS[c]}": float(len(v)) for c, v in dice.items()})
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("site"), subjects=4, shape=(24, 24, 12), seed=3)


def _evaluate(dataset: Path, req: EvalRequest) -> tuple[dict[str, float], list[dict]]:
    info = load_dataset_info(dataset)
    items = site_cases(info, req)
    return evaluate_cases(intensity_classifier(), req, items, class_lookup(info.labels, req.labels)), items


def test_site_dice_and_volumes_equal_an_independent_numpy_computation(dataset: Path) -> None:
    got, items = _evaluate(dataset, request("all"))
    assert got["n_cases"] == 4 == len(items)
    want = independent(items)
    for name in ("liver", "spleen", "kidney"):
        assert got[f"dice_{name}"] == pytest.approx(want[f"dice_{name}"], abs=1e-6)
        assert got[f"volume_pred_ml_{name}"] == pytest.approx(want[f"volume_pred_ml_{name}"], rel=1e-9)
        assert got[f"n_{name}"] == want[f"n_{name}"]
        assert 0.5 < got[f"dice_{name}"] < 1.0, "the intensity classifier must find the organs"
        assert got[f"missed_{name}"] == 0.0
        assert 0.0 < got[f"hd95_{name}"] < 24 * 4.0, "HD95 in mm on the volume's grid"
    assert got["dice_mean"] == pytest.approx(np.mean([want[f"dice_{n}"] for n in ("liver", "spleen", "kidney")]))


def test_val_split_is_the_federation_validation_subjects(dataset: Path) -> None:
    from imaging.data.items import segmentation_items
    from imaging.data.splits import split_by_subject

    got, items = _evaluate(dataset, request("val"))
    expected = split_by_subject(segmentation_items(load_dataset_info(dataset), "CT"), 3, 0, 0).val
    assert [i["series_key"] for i in items] == [i["series_key"] for i in expected]
    assert 0 < got["n_cases"] < 4


def test_labels_are_matched_by_name_not_by_value(dataset: Path, tmp_path: Path) -> None:
    """Another hospital's ingest numbers its labels 1=kidney, 2=liver, 5=spleen: same figures."""
    other = tmp_path / "renumbered"
    (other / "labels").mkdir(parents=True)
    (other / "volumes").symlink_to(dataset / "volumes")
    (other / "catalog.csv").write_bytes((dataset / "catalog.csv").read_bytes())
    new_value = {0: 0, 1: 2, 2: 5, 3: 1}
    (other / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "2": "liver", "5": "spleen",
                                                               "1": "kidney"}}))
    for path in (dataset / "labels").glob("*.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        out = np.zeros_like(data)
        for old, new in new_value.items():
            out[data == old] = new
        nib.save(nib.Nifti1Image(out, img.affine), str(other / "labels" / path.name))
    base, _ = _evaluate(dataset, request("all"))
    moved, _ = _evaluate(other, request("all"))
    for key, value in base.items():
        assert moved[key] == pytest.approx(value, abs=1e-9), key


def test_pooled_dice_equals_one_evaluation_over_every_site_case(dataset: Path, tmp_path: Path) -> None:
    second = make_train_dataset(tmp_path / "b", subjects=3, shape=(24, 24, 12), seed=11)
    a, items_a = _evaluate(dataset, request("all"))
    b, items_b = _evaluate(second, request("all"))
    pooled = pool({"A": a, "B": b}, ["liver", "spleen", "kidney"])
    want = independent(items_a + items_b)
    assert pooled["n_cases"] == 7
    for name in ("liver", "spleen", "kidney"):
        assert pooled[f"dice_{name}"] == pytest.approx(want[f"dice_{name}"], abs=1e-6)
        assert pooled[f"volume_pred_ml_{name}"] == pytest.approx(want[f"volume_pred_ml_{name}"], rel=1e-9)


def test_a_label_only_some_sites_have_is_pooled_over_those_sites() -> None:
    sites = {"A": {"n_cases": 4.0, "n_liver": 4.0, "dice_liver": 0.9, "n_kidney": 0.0},
             "B": {"n_cases": 2.0, "n_liver": 2.0, "dice_liver": 0.6, "n_kidney": 2.0, "dice_kidney": 0.5}}
    pooled = pool(sites, ["liver", "kidney"])
    assert pooled["dice_liver"] == pytest.approx((4 * 0.9 + 2 * 0.6) / 6)
    assert pooled["dice_kidney"] == pytest.approx(0.5), "A has no kidney: not a zero in the pool"
    assert pooled["n_kidney"] == 2.0
