"""`imaging evaluate` on the demo federation (issue 31), real processes end to end: the three
synthetic demo sites written and ingested as `imaging federate` prepares them, a SuperLink
and one SuperNode per site (Flower's own processes), the registered model sent to every
site, aggregates back, one MLflow run in the `evaluation` experiment, `eval.*` tags and a
description line on the model version.

The oracle is independent of the evaluation code: `imaging infer` run on each site's
dataset, its `seg.nii.gz` masks compared with the site's label files by a few lines of
nibabel + numpy (labels matched by name through each site's dataset.json). A site whose
SuperNode is killed before the evaluation is a reported gap, not a failed run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf

from imaging.audit import build_needles, scan_mlflow, scan_paths
from imaging.synth.canaries import CANARY_TOKEN
from tests.fixtures.train_data import CONF_DIR
from tests.integration.test_federated import SITECUSTOMIZE

pytestmark = [pytest.mark.integration, pytest.mark.federated, pytest.mark.slow]

SITES = ("A", "B", "C")
LABELS = ("liver", "spleen", "kidney")
MODEL = "demo_federated"
# The demo experiment, with fewer synthetic patients per site (the same preparation code).
OVERRIDES = ["experiment=demo_federated", "federation.synthetic.subjects=3", "federation.connect_timeout_s=60",
             "federation.round_timeout_s=300"]


def register_random_model(root: Path, seed: int = 7, *, cfg: Any = None, name: str = MODEL, alias: str = "candidate",
                          experiment: str = MODEL, series_rule: dict[str, Any] | None = None) -> str:
    """Register ``cfg``'s network and preprocessing (default: the demo federation's) with seeded random
    weights as ``name@alias`` (what evaluation needs is a registered bundle, not a good model);
    returns the tracking URI."""
    import mlflow
    import torch

    from imaging.data.transforms import preprocessing_from_config
    from imaging.models.registry import build_network
    from imaging.plan.train import _network_config, precision_record
    from imaging.tracking.registry import register_model
    from imaging.tracking.store import activate

    if cfg is None:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("evaluate", overrides=[*OVERRIDES, f"paths.root_dir={root}", "model_uri=unused"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    labels = {0: "background", **{i + 1: n for i, n in enumerate(LABELS)}}
    pre = preprocessing_from_config(data, {i: i for i in labels})  # type: ignore[arg-type]
    pre["precision"] = precision_record(cfg)
    net_cfg = _network_config(OmegaConf.to_container(cfg.model, resolve=True), len(labels), "segmentation")  # type: ignore[arg-type]
    torch.manual_seed(seed)
    network = build_network(net_cfg)
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    activate(uri)
    # Artifacts under the test's root: a bare set_experiment puts them in ./mlruns of the checkout.
    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=(root / "mlflow" / "artifacts").as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="random-weights"):
        register_model(network, network_config=net_cfg, preprocessing=pre, labels=labels, task="segmentation",
                       name=name, alias=alias, series_rule=series_rule)
    return uri


def imaging(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGING_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "imaging", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=root)


def labelled_ct(dataset: Path) -> dict[str, str]:
    """series_key -> label path of the catalog's ok CT rows with a label (the model's modality)."""
    with (dataset / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        return {r["series_key"]: r["label_path"] for r in csv.DictReader(fh)
                if r["status"] == "ok" and r["modality"] == "CT" and r["label_path"]}


def independent_dice(seg_dir: Path, dataset: Path) -> dict[str, float]:
    """Per label, mean Dice over the cases whose reference has the organ, from `imaging infer`'s masks."""
    names = {int(v): n for v, n in json.loads((dataset / "dataset.json").read_text())["labels"].items()}
    model_class = {n: i + 1 for i, n in enumerate(LABELS)}  # the model's classes (seg.nii.gz values)
    scores: dict[str, list[float]] = {n: [] for n in LABELS}
    for key, label_path in labelled_ct(dataset).items():
        pred = np.asarray(nib.load(seg_dir / key / "seg.nii.gz").dataobj).astype(int)
        ref = np.asarray(nib.load(dataset / label_path).dataobj).astype(int)
        for value, name in names.items():
            if name not in model_class:
                continue
            p, t = pred == model_class[name], ref == value
            if t.any():
                scores[name].append(2.0 * float((p & t).sum()) / float(p.sum() + t.sum()))
    return {f"dice_{n}": float(np.mean(v)) for n, v in scores.items() if v}


@dataclass
class Evaluated:
    root: Path
    uri: str
    result: dict
    stdout: str
    seconds: float


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluated]:
    import time

    root = tmp_path_factory.mktemp("evaluate-root")
    (root / ".imaging").write_text("")
    uri = register_random_model(root)
    start = time.perf_counter()
    proc = imaging(root, "evaluate", f"model=models:/{MODEL}@candidate", "split=all", *OVERRIDES)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result_path = next((root / "runs" / "evaluation").glob("*/evaluation.json"))
    yield Evaluated(root, uri, json.loads(result_path.read_text()), proc.stdout, seconds)


def test_every_site_answers_and_its_dice_equals_imaging_infer_plus_numpy(evaluated: Evaluated) -> None:
    r = evaluated.result
    assert r["answered"] == list(SITES) and r["gaps"] == []
    for site in SITES:
        dataset = evaluated.root / "demo" / "federated" / site / "dataset"
        out = evaluated.root / "infer" / site
        proc = imaging(evaluated.root, "infer", f"model=models:/{MODEL}@candidate", f"input={dataset}",
                       f"output_dir={out}", "inference.device=cpu", "demo_key=true")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        want = independent_dice(out, dataset)
        got = r["per_site"][site]
        assert want, f"site {site}: the oracle found no labelled case"
        for key, value in want.items():
            # The issue asks for 0.01; the same predictor and masks give far closer (random weights:
            # Dice of a few hundredths, so 0.01 alone would not tell a right figure from a wrong one).
            assert value > 0.0, (site, key)
            assert got[key] == pytest.approx(value, abs=1e-3), (site, key)
        assert got["n_cases"] == len(labelled_ct(dataset))


def test_one_mlflow_run_and_the_version_tags(evaluated: Evaluated) -> None:
    client = MlflowClient(evaluated.uri, registry_uri=evaluated.uri)
    exp = client.get_experiment_by_name("evaluation")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    r = evaluated.result
    assert run.info.status == "FINISHED"
    assert run.data.params["model_version"] == "1" and run.data.tags["model.uri"] == f"models:/{MODEL}/1"
    for site in SITES:
        assert run.data.tags[f"site.{site}.catalog_sha256"] == r["catalog_sha256"][site]
        assert len(r["catalog_sha256"][site]) == 64
        for name in LABELS:
            assert run.data.metrics[f"site.{site}.dice_{name}"] == pytest.approx(r["per_site"][site][f"dice_{name}"])
    version = client.get_model_version(MODEL, "1")
    for name in LABELS:
        # Pooled: case-weighted over the sites (weights: cases with the organ).
        n = sum(r["per_site"][s][f"n_{name}"] for s in SITES)
        pooled = sum(r["per_site"][s][f"dice_{name}"] * r["per_site"][s][f"n_{name}"] for s in SITES) / n
        assert run.data.metrics[f"pooled.dice_{name}"] == pytest.approx(pooled)
        assert float(version.tags[f"eval.pooled.dice_{name}"]) == pytest.approx(pooled, abs=1e-4)
        for site in SITES:
            assert float(version.tags[f"eval.{site}.dice_{name}"]) == pytest.approx(
                r["per_site"][site][f"dice_{name}"], abs=1e-4)
    assert version.tags["eval.pooled.sites"] == "A,B,C"
    assert "Cross-site evaluation (split=all" in (version.description or "")


def test_only_aggregates_crossed_the_wire(evaluated: Evaluated) -> None:
    for item in evaluated.result["received"]:
        assert set(item["records"]) == {"metrics", "site"}
        assert item["records"]["site"]["keys"] == ["catalog_sha256", "name"]
        assert all(k.startswith(("dice_", "hd95_", "missed_", "n_", "volume_")) for k in
                   item["records"]["metrics"]["keys"]), item


def test_a_killed_site_is_a_reported_gap_not_a_failed_run(evaluated: Evaluated,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import imaging.pipelines.evaluate as pipeline
    from imaging.federated.processes import LocalFederation

    hook_dir = evaluated.root / "audit-hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    open_log = evaluated.root / "opened.log"

    class SiteCGoesAway(LocalFederation):
        """Site C's SuperNode killed once started; the coordinator's processes audited (every open logged)."""

        def start_superlink(self, timeout_s: float = 60.0) -> None:
            self.coordinator_env = {"IMAGING_TEST_OPEN_LOG": str(open_log),
                                    "PYTHONPATH": os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")])}
            super().start_superlink(timeout_s)

        def start_supernodes(self, sites: dict, timeout_s: float = 90.0) -> None:  # type: ignore[override]
            super().start_supernodes(sites, timeout_s)
            self.kill_site("C")

    monkeypatch.setattr(pipeline, "LocalFederation", SiteCGoesAway)
    monkeypatch.setenv("IMAGING_ROOT", str(evaluated.root))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[*OVERRIDES, f"paths.root_dir={evaluated.root}",
                                             f"model_uri=models:/{MODEL}@candidate", "split=val", "data.split.folds=3",
                                             "federation.connect_timeout_s=20", "federation.round_timeout_s=120"])
    out = pipeline.run(cfg)
    assert out.result["answered"] == ["A", "B"] and out.result["gaps"] == ["C"]
    client = MlflowClient(evaluated.uri, registry_uri=evaluated.uri)
    run = client.get_run(str(out.run_id))
    assert run.info.status == "FINISHED" and run.data.tags["evaluation.gaps"] == "C"
    version = client.get_model_version(MODEL, "1")
    assert version.tags["eval.gaps"] == "C" and version.tags["eval.pooled.sites"] == "A,B"
    assert "no answer from C" in (version.description or "")
    # The coordinator's processes (SuperLink, ServerApp) read the model files and their config,
    # never a site's folder; nothing identifying in the run dir or the MLflow store.
    opened = open_log.read_text().splitlines()
    assert any("request.json" in line for line in opened), "the audit hook must have run in the ServerApp"
    site_dirs = [str(evaluated.root / "demo" / "federated" / s) for s in SITES]
    assert [line for line in opened if any(d in line for d in site_dirs)] == []
    fed = evaluated.root / "demo" / "federated"
    needles = build_needles([CANARY_TOKEN], list(fed.glob("*/dataset.private/**/links.csv")),
                            list(fed.glob("*/export/manifest.json")))
    assert scan_paths(list(fed.glob("*/export/manifest.json")), needles), "the needles find the PHI at its source"
    assert scan_paths([out.run_dir / "evaluation.json", out.run_dir / "federate.yaml"], needles) == []
    assert scan_mlflow(evaluated.uri, needles) == []
