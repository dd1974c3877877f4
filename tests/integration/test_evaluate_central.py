"""`imaging evaluate` of a *centrally trained* model at the federation's sites (issue 31):
external validation. The model is registered under another name than the federation's
(``central_seg@champion``), with the central demo experiment's network and preprocessing
(``experiment=demo_seg``: another patch size and network than ``demo_federated``'s) and its
own series selection rule: thin (<= 5 mm) CT with a Siemens/Philips ``B`` kernel, one per
study. Each synthetic demo site holds one patient per vendor, so the rule leaves out the GE
(``STANDARD``) patient's CT at sites A and B; site C's scanner writes 6.25 mm slices, so the
rule leaves it without a case: reported as such, not an error of the run.

Oracles independent of the evaluation code: which cases the rule keeps is read from each
site's source DICOM headers with pydicom (ConvolutionKernel); the figures are `imaging infer`
(which applies the same stored rule) on each site's dataset, its masks compared with the
site's labels by nibabel + numpy over exactly those cases.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from tests.fixtures.train_data import CONF_DIR
from tests.integration.test_evaluate_federated import (
    LABELS,
    OVERRIDES,
    SITES,
    imaging,
    register_random_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.federated, pytest.mark.slow]

MODEL = "central_seg"
RULE = {"name": "b_kernel_ct", "per_study": "one", "tie_break": ["most_slices", "thinnest"],
        "match": {"all": [{"name": "ct", "modality": "CT"}, {"name": "thin", "slice_thickness": [None, 5.0]},
                          {"name": "b_kernel", "kernel": "^B"}]}}


def register_central_model(root: Path, seed: int = 11) -> str:
    """demo_seg's network and preprocessing with seeded random weights and RULE, as MODEL@champion."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo_seg", f"paths.root_dir={root}"])
    return register_random_model(root, seed, cfg=cfg, name=MODEL, alias="champion", experiment="demo_seg",
                                 series_rule=RULE)


def labelled_ct(dataset: Path) -> dict[str, str]:
    with (dataset / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        return {r["series_key"]: r["label_path"] for r in csv.DictReader(fh)
                if r["status"] == "ok" and r["modality"] == "CT" and r["label_path"]}


def rule_keeps(dataset: Path, key: str) -> bool:
    """RULE by hand on the series' first source file, read with pydicom (hospital side)."""
    files = json.loads((dataset.with_name(dataset.name + ".private") / "sources" / f"{key}.json").read_text())["files"]
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return bool(re.match("^B", str(ds.ConvolutionKernel), re.I)) and float(ds.SliceThickness) <= 5.0


def oracle_dice(seg_dir: Path, dataset: Path, keys: list[str]) -> dict[str, float]:
    names = {int(v): n for v, n in json.loads((dataset / "dataset.json").read_text())["labels"].items()}
    model_class = {n: i + 1 for i, n in enumerate(LABELS)}
    scores: dict[str, list[float]] = {n: [] for n in LABELS}
    labels = labelled_ct(dataset)
    for key in keys:
        pred = np.asarray(nib.load(seg_dir / key / "seg.nii.gz").dataobj).astype(int)
        ref = np.asarray(nib.load(dataset / labels[key]).dataobj).astype(int)
        for value, name in names.items():
            if name in model_class and (ref == value).any():
                p, t = pred == model_class[name], ref == value
                scores[name].append(2.0 * float((p & t).sum()) / float(p.sum() + t.sum()))
    return {f"dice_{n}": float(np.mean(v)) for n, v in scores.items() if v}


def test_a_central_model_with_its_rule_evaluated_at_the_federation_sites(tmp_path: Path) -> None:
    root = tmp_path
    (root / ".imaging").write_text("")
    uri = register_central_model(root)
    proc = imaging(root, "evaluate", f"model=models:/{MODEL}@champion", "split=all", *OVERRIDES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((root / "runs" / "evaluation" / f"{MODEL}-v1-all" / "evaluation.json").read_text())
    assert result["answered"] == list(SITES) and result["gaps"] == [] and result["no_cases"] == ["C"]
    for site in SITES:
        dataset = root / "demo" / "federated" / site / "dataset"
        labelled = labelled_ct(dataset)
        keys = sorted(k for k in labelled if rule_keeps(dataset, k))
        got = result["per_site"][site]
        assert got["n_cases"] == len(keys) and got["n_rule_excluded"] == len(labelled) - len(keys)
        if site == "C":
            assert keys == [] and labelled, "site C: labelled cases, none of them thin"
            assert not [k for k in got if k.startswith(("dice_", "hd95_"))]
            continue
        assert 0 < len(keys) < len(labelled), f"site {site}: the rule must leave out part of the cases"
        out = root / "infer" / site
        proc = imaging(root, "infer", f"model=models:/{MODEL}@champion", f"input={dataset}", f"output_dir={out}",
                       "inference.device=cpu", "demo_key=true")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        # `imaging infer` ran the stored rule too: of the labelled cases, exactly the oracle's.
        assert sorted(k for k in labelled if (out / k / "seg.nii.gz").is_file()) == keys
        want = oracle_dice(out, dataset, keys)
        assert want, f"site {site}: the oracle found no organ"
        for key, value in want.items():
            assert value > 0.0, (site, key)
            assert got[key] == pytest.approx(value, abs=1e-3), (site, key)
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version(MODEL, "1")
    assert version.tags["eval.pooled.sites"] == "A,B" and version.tags["eval.no_cases"] == "C"
    for site in ("A", "B"):
        assert float(version.tags[f"eval.{site}.dice_liver"]) == pytest.approx(
            result["per_site"][site]["dice_liver"], abs=1e-4)
    assert "eval.C.dice_liver" not in version.tags
    # Pooled over the cases the rule kept: case-weighted over A and B.
    n = sum(result["per_site"][s]["n_liver"] for s in ("A", "B"))
    pooled = sum(result["per_site"][s]["dice_liver"] * result["per_site"][s]["n_liver"] for s in ("A", "B")) / n
    assert float(version.tags["eval.pooled.dice_liver"]) == pytest.approx(pooled, abs=1e-4)
    assert "C no case selected" in (version.description or "")
