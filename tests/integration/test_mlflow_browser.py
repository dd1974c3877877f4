"""The reviewer's view in a real browser: headless Chromium (Debian's ``chromium``)
renders the MLflow UI of a real server (PostgreSQL backend) after a tiny
training and an inference run, and the rendered DOM shows the descriptions,
the dataset, the alias and the links of the lineage. Screenshots are kept
under the test's tmp dir (path in the test report's ``screenshots`` property).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from imaging.pipelines.infer.run import run_inference
from imaging.pipelines.train.run import run
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.train_data import CONF_DIR, compose_train, make_train_dataset

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.browser]
VIEW = "?workflowType=machine_learning"
BUDGET_MS = 20000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("Debian's 'chromium' is not installed (scripts/system-deps.sh installs it)")
    return found


def _browse(pages: dict[str, str], out: Path) -> dict[str, str]:
    """Render every page twice at once (DOM dump, screenshot), each Chromium with its own profile."""
    exe = _chromium()
    procs = {}
    for name, url in pages.items():
        for kind in ("dom", "png"):
            profile = out / f"profile-{name}-{kind}"
            action = ["--dump-dom"] if kind == "dom" else ["--window-size=1400,1100", f"--screenshot={out / name}.png"]
            cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}", *action,
                   url]
            procs[(name, kind)] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=out)
    doms = {}
    for (name, kind), proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"chromium {name} {kind}: {stderr.decode(errors='replace')[-2000:]}"
        if kind == "dom":
            doms[name] = stdout.decode(errors="replace")
            (out / f"{name}.html").write_text(doms[name], encoding="utf-8")
        else:
            assert (out / f"{name}.png").stat().st_size > 10_000, f"empty screenshot of {name}"
    return doms


def test_reviewer_pages_render_lineage(tmp_path: Path, mlflow_pg_server: MlflowServer,
                                       record_property: Callable[[str, object], None]) -> None:
    uri = mlflow_pg_server.uri
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    trained = run(compose_train(tmp_path, dataset, f"tracking.uri={uri}", "trainer.max_epochs=2",
                                "tracking.experiment_name=browser_seg"))
    # One volume breaks after training: inference isolates it as the run's one failure (the
    # catalog's own error row is a study without a match in studies.csv, not a failed series).
    broken = dataset / "volumes" / "ser050.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("infer", overrides=[
            "model_uri=models:/browser_seg@candidate", f"input={dataset}", f"output_dir={tmp_path / 'infer'}",
            f"paths.root_dir={tmp_path}", "demo_key=true", "seg.enabled=false", f"tracking.uri={uri}",
            "tracking.experiment_name=browser_infer",
            "inference/select@select=any_series"])  # the test volumes carry no DICOM tags for the model's CT rule
    inferred = run_inference(cfg)
    assert inferred.exit_code == 0 and inferred.run_id
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    train_run = client.get_run(trained.run_id)
    infer_run = client.get_run(inferred.run_id)
    ds_name = train_run.inputs.dataset_inputs[0].dataset.name
    assert ds_name.startswith("catalog-")

    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))
    doms = _browse({
        "training_run": f"{uri}/#/experiments/{train_run.info.experiment_id}/runs/{trained.run_id}{VIEW}",
        "inference_run": f"{uri}/#/experiments/{infer_run.info.experiment_id}/runs/{inferred.run_id}{VIEW}",
        "model_version": f"{uri}/#/models/browser_seg/versions/1",
    }, shots)
    text = {k: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", v)) for k, v in doms.items()}

    # Training run: the model-training view, its description rendered, the dataset as its input.
    assert "Validation Dice per label" in text["training_run"] and "Config highlights" in text["training_run"]
    assert ds_name in text["training_run"]
    assert "Evaluation runs" not in text["training_run"]  # not the GenAI view
    assert 'href="#/models/browser_seg/versions/1"' in doms["training_run"]
    # Inference run: description with the linked model version, input, per-series table, failures.
    assert "Per-series results" in text["inference_run"] and "Failures (1)" in text["inference_run"]
    assert ds_name in text["inference_run"]
    assert 'href="#/models/browser_seg/versions/1"' in doms["inference_run"]
    assert f"runs/{trained.run_id}{VIEW}" in doms["inference_run"]  # -> the training run
    assert "overlay" in text["inference_run"] or ".png" in text["inference_run"]  # review images linked
    # Model version: alias, lineage description, link to the training run.
    assert "candidate" in text["model_version"] and "Lineage" in text["model_version"]
    assert trained.run_id in doms["model_version"]
    assert f"runs/{trained.run_id}" in doms["model_version"]
