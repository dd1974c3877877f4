"""Cross-site evaluation applies the model's own series selection rule at each site (issue 31),
as `imaging infer` does: the site's case count and Dice are those of exactly the cases the
rule selects, a rule that leaves a site without a case is a site with no case (not an
error), and the coordinator carries the model's rule (or `select`'s replacement keys) to
the sites.

The oracles are independent of the selection code: which cases a rule on BodyPartExamined
keeps is read from the site's catalog.csv with the csv module; Dice is plain numpy over the
masks of the same predictor (tests/unit/test_evaluate_site.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from imaging.data.items import load_dataset_info
from imaging.federated.evaluation import (
    EvalRequest,
    class_lookup,
    evaluate_at_site,
    evaluate_cases,
    site_cases,
)
from imaging.models.registry import build_network
from imaging.tracking.evaluation import log_evaluation
from imaging.tracking.registry import ModelBundle
from tests.fixtures.train_data import CONF_DIR, make_train_dataset
from tests.unit.test_evaluate_site import (
    LABELS,
    independent,
    intensity_classifier,
    preprocessing,
    request,
)

ABDOMEN = {"name": "abdomen_only", "per_study": "all",
           "match": {"all": [{"name": "abdomen", "body_part": "ABDOMEN"}]}}
PELVIS = {"name": "pelvis_only", "per_study": "all", "match": {"all": [{"name": "pelvis", "body_part": "PELVIS"}]}}
TINY_UNET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
             "strides": [2], "num_res_units": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Subjects alternate CHEST / ABDOMEN in the catalog's body_part: the rule keeps half of them.
    return make_train_dataset(tmp_path_factory.mktemp("site"), subjects=4, shape=(24, 24, 12), seed=5)


def catalog_keys(dataset: Path, body_part: str) -> list[str]:
    """The oracle: labelled ok CT rows of that body part, straight from catalog.csv."""
    with (dataset / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        return sorted(r["series_key"] for r in csv.DictReader(fh)
                      if r["status"] == "ok" and r["modality"] == "CT" and r["label_path"]
                      and r["body_part"] == body_part)


def with_rule(req: EvalRequest, rule: dict | None) -> EvalRequest:
    from dataclasses import replace

    return replace(req, series_rule=rule)


def test_dice_and_case_count_are_over_exactly_the_cases_the_rule_selects(dataset: Path) -> None:
    info = load_dataset_info(dataset)
    req = with_rule(request("all"), ABDOMEN)
    items = site_cases(info, req)
    want_keys = catalog_keys(dataset, "ABDOMEN")
    assert sorted(i["series_key"] for i in items) == want_keys
    assert 0 < len(want_keys) < len(site_cases(info, request("all"))), "the rule must exclude part of the cases"
    got = evaluate_cases(intensity_classifier(), req, items, class_lookup(info.labels, req.labels))
    want = independent([i for i in site_cases(info, request("all")) if i["series_key"] in want_keys])
    assert got["n_cases"] == len(want_keys)
    for name in ("liver", "spleen", "kidney"):
        assert got[f"dice_{name}"] == pytest.approx(want[f"dice_{name}"], abs=1e-6)
        assert got[f"n_{name}"] == want[f"n_{name}"]
        assert 0.5 < got[f"dice_{name}"] < 1.0
    everything = evaluate_cases(intensity_classifier(), req, site_cases(info, request("all")),
                                class_lookup(info.labels, req.labels))
    assert any(abs(everything[f"dice_{n}"] - got[f"dice_{n}"]) > 1e-6 for n in ("liver", "spleen", "kidney")), \
        "the excluded cases would have changed the figure: the test must tell them apart"


def test_val_split_then_rule(dataset: Path) -> None:
    """split=val keeps training's validation subjects; the rule then narrows them further."""
    info = load_dataset_info(dataset)
    val = {i["series_key"] for i in site_cases(info, request("val"))}
    got = {i["series_key"] for i in site_cases(info, with_rule(request("val"), ABDOMEN))}
    assert got == val & set(catalog_keys(dataset, "ABDOMEN"))


def _payload(dataset: Path, tmp_path: Path, rule: dict | None) -> dict:
    torch.manual_seed(3)
    network = build_network(TINY_UNET)
    req = EvalRequest(TINY_UNET, preprocessing(), LABELS, "all", 3, 0, 0, {"device": "cpu", "sw_batch_size": 2}, rule)
    return {"state": {k: v.numpy() for k, v in network.state_dict().items()}, "request": req.to_json(),
            "node_config": {"site": "A", "dataset-dir": str(dataset), "work-dir": str(tmp_path / "work")}}


def test_the_site_operation_applies_the_rule_in_the_request(dataset: Path, tmp_path: Path) -> None:
    """The whole site-side operation (request JSON in, aggregates out) against numpy over the selected cases."""
    from imaging.engine.predict import InferenceOptions, SeriesPredictor

    payload = _payload(dataset, tmp_path, ABDOMEN)
    out = evaluate_at_site(payload)
    m = out["metrics"]
    keys = catalog_keys(dataset, "ABDOMEN")
    assert m["n_cases"] == len(keys) and m["n_rule_excluded"] == 4 - len(keys)
    network = build_network(TINY_UNET)
    network.load_state_dict({k: torch.from_numpy(v) for k, v in payload["state"].items()})
    predictor = SeriesPredictor(network, preprocessing(), InferenceOptions(device="cpu"))
    import nibabel as nib

    assert any(m[f"dice_{n}"] > 0.0 for n in ("liver", "spleen", "kidney")), "a comparison of zeros says nothing"
    for c, name in ((1, "liver"), (2, "spleen"), (3, "kidney")):
        scores = []
        for key in keys:
            pred, _ = predictor.predict(str(dataset / "volumes" / f"{key}.nii.gz"))
            ref = np.asarray(nib.load(dataset / "labels" / f"{key}.nii.gz").dataobj).astype(int)
            p, t = pred == c, ref == c
            scores.append(2.0 * (p & t).sum() / max(p.sum() + t.sum(), 1))
        assert m[f"dice_{name}"] == pytest.approx(float(np.mean(scores)), abs=1e-6)


def test_a_rule_that_leaves_a_site_without_a_case_is_not_an_error(dataset: Path, tmp_path: Path) -> None:
    out = evaluate_at_site(_payload(dataset, tmp_path, PELVIS))
    m = out["metrics"]
    assert m["n_cases"] == 0 and m["n_rule_excluded"] == 4
    assert not [k for k in m if k.startswith(("dice_", "hd95_", "volume_"))]
    assert out["site"] == "A" and len(out["catalog_sha256"]) == 64


def test_a_malformed_rule_in_the_request_names_its_key(dataset: Path, tmp_path: Path) -> None:
    from imaging.selection.rules import RuleError

    bad = {**ABDOMEN, "match": {"all": [{"name": "abdomen", "body_prat": "ABDOMEN"}]}}
    with pytest.raises(RuleError, match="body_prat"):
        evaluate_at_site(_payload(dataset, tmp_path, bad))


def _bundle(selection: dict | None) -> ModelBundle:
    return ModelBundle(build_network(TINY_UNET), TINY_UNET, preprocessing(), LABELS, "segmentation", "central", "2",
                       None, selection)


@pytest.mark.parametrize(("overrides", "want"), [
    ([], ABDOMEN),                                                    # the model's own rule
    (["select.per_study=one"], {**ABDOMEN, "per_study": "one"}),      # select.* keys replace the model's
    (["inference/select@select=any_series"], None),                   # another rule replaces it altogether
])
def test_the_coordinator_sends_the_models_rule(tmp_path: Path, overrides: list[str], want: dict | None) -> None:
    import imaging.pipelines.evaluate as pipeline

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=["experiment=demo_federated", f"paths.root_dir={tmp_path}",
                                             "model_uri=models:/central@champion", *overrides])
    pipeline._write_model(_bundle(ABDOMEN), cfg, tmp_path)
    sent = EvalRequest.from_json((tmp_path / "model" / "request.json").read_text())
    if want is None:
        assert sent.series_rule is not None and sent.series_rule["name"] == "any_series"
    else:
        assert sent.series_rule == want
    assert json.loads((tmp_path / "model" / "bundle.json").read_text())["selection"] == ABDOMEN


def test_a_model_without_a_rule_sends_none(tmp_path: Path) -> None:
    import imaging.pipelines.evaluate as pipeline

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=["experiment=demo_federated", f"paths.root_dir={tmp_path}",
                                             "model_uri=models:/central@champion"])
    pipeline._write_model(_bundle(None), cfg, tmp_path)
    assert EvalRequest.from_json((tmp_path / "model" / "request.json").read_text()).series_rule is None


def test_a_site_without_a_case_is_reported_on_the_run_and_the_version(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "model"))
    result = {"model_uri": "models:/m@candidate", "split": "all", "sites": ["A", "B"], "answered": ["A", "B"],
              "gaps": [], "no_cases": ["B"], "labels": ["liver"], "catalog_sha256": {"A": "a" * 64, "B": "b" * 64},
              "per_site": {"A": {"n_cases": 2.0, "n_liver": 2.0, "dice_liver": 0.7, "dice_mean": 0.7,
                                 "n_rule_excluded": 1.0},
                           "B": {"n_cases": 0.0, "n_liver": 0.0, "n_rule_excluded": 3.0}},
              "pooled": {"n_cases": 2.0, "n_liver": 2.0, "dice_liver": 0.7, "dice_mean": 0.7, "n_rule_excluded": 4.0},
              "errors": {}, "received": []}
    run_id = log_evaluation(result, tracking_uri=uri, artifact_location=str(tmp_path / "art"),
                            experiment_name="evaluation", run_name="m-v1-all", model_name="m", version="1")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["evaluation.no_cases"] == "B"
    assert run.data.metrics["site.B.n_cases"] == 0.0 and run.data.metrics["pooled.n_rule_excluded"] == 4.0
    version = client.get_model_version("m", "1")
    assert version.tags["eval.no_cases"] == "B" and version.tags["eval.pooled.sites"] == "A"
    assert "eval.B.dice_liver" not in version.tags
    assert "B no case selected" in (version.description or "")
