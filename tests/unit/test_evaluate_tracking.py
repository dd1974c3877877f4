"""Cross-site evaluation into MLflow (issue 31), on a real SQLite store: one run in the
`evaluation` experiment with per-site and pooled metrics and the catalog hashes; the
model version gets `eval.*` tags and one description line, replaced (not repeated) by
the next evaluation on the same split and kept beside one on another split. And the
command's refusals: a bad split or an unknown model is exit 2 naming the key, before
any site is prepared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.tracking.evaluation import log_evaluation


def result(split: str = "all", dice_a: float = 0.8) -> dict:
    return {"model_uri": "models:/m@candidate", "split": split, "sites": ["A", "B", "C"], "answered": ["A", "B"],
            "gaps": ["C"], "labels": ["liver", "kidney"], "catalog_sha256": {"A": "a" * 64, "B": "b" * 64},
            "per_site": {"A": {"n_cases": 3.0, "dice_liver": dice_a, "n_liver": 3.0, "dice_mean": dice_a},
                         "B": {"n_cases": 1.0, "dice_liver": 0.4, "n_liver": 1.0, "dice_kidney": 0.5,
                               "n_kidney": 1.0, "dice_mean": 0.45}},
            "pooled": {"n_cases": 4.0, "dice_liver": (3 * dice_a + 0.4) / 4, "dice_kidney": 0.5, "dice_mean": 0.6},
            "errors": {}, "received": []}


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "model"), description="trained on X")
    return uri, client


def test_one_run_per_site_and_pooled_and_the_version_tagged(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    uri, client = store
    run_id = log_evaluation(result(), tracking_uri=uri, artifact_location=str(tmp_path / "art"),
                            experiment_name="evaluation", run_name="m-v1-all", model_name="m", version="1")
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "evaluation"
    assert run.data.metrics["site.A.dice_liver"] == 0.8 and run.data.metrics["site.B.dice_kidney"] == 0.5
    assert run.data.metrics["pooled.dice_liver"] == pytest.approx(0.7)
    assert run.data.metrics["sites_missing"] == 1.0
    assert run.data.tags["site.A.catalog_sha256"] == "a" * 64 and run.data.tags["evaluation.gaps"] == "C"
    assert run.data.params["model_version"] == "1"
    tags = client.get_model_version("m", "1").tags
    assert tags["eval.A.dice_liver"] == "0.8000" and tags["eval.pooled.dice_liver"] == "0.7000"
    assert tags["eval.B.dice_kidney"] == "0.5000" and "eval.A.dice_kidney" not in tags, "A has no kidney"
    assert tags["eval.pooled.sites"] == "A,B" and tags["eval.gaps"] == "C" and tags["eval.run_id"] == run_id


def test_the_description_line_is_replaced_per_split(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    uri, client = store
    kw = {"tracking_uri": uri, "artifact_location": str(tmp_path / "art"), "experiment_name": "evaluation",
          "model_name": "m", "version": "1"}
    log_evaluation(result("all", 0.8), run_name="a", **kw)
    log_evaluation(result("all", 0.6), run_name="b", **kw)
    log_evaluation(result("val", 0.9), run_name="c", **kw)
    lines = (client.get_model_version("m", "1").description or "").splitlines()
    assert lines[0] == "trained on X"
    assert len([ln for ln in lines if ln.startswith("Cross-site evaluation (split=all,")]) == 1
    assert len([ln for ln in lines if ln.startswith("Cross-site evaluation (split=val,")]) == 1
    all_line = next(ln for ln in lines if "split=all" in ln)
    assert "pooled Dice 0.600 over A, B (4 cases)" in all_line and "A 0.600 (3 cases)" in all_line
    assert "no answer from C" in all_line


# A bad split is refused by the compose-time settings check (imaging/settings), which names the key
# and the value; an unknown model by evaluation itself, which names the argument.
@pytest.mark.parametrize(("arg", "key"), [("split=train", "at 'split': 'train' is not one of ['all', 'val']"),
                                          ("model=models:/nope@candidate", "model=models:/nope@candidate")])
def test_bad_split_or_unknown_model_is_exit_2_naming_it(tmp_path: Path, arg: str, key: str) -> None:
    (tmp_path / ".imaging").write_text("")
    args = ["model=models:/nope@candidate", "experiment=demo_federated", arg]
    proc = subprocess.run([sys.executable, "-m", "imaging", "evaluate", *args], capture_output=True, text=True,
                          env={**os.environ, "IMAGING_ROOT": str(tmp_path)}, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert key in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "demo").exists(), "nothing prepared before the refusal"


def test_a_site_error_crosses_as_its_type_only() -> None:
    """What a failing site answers reaches evaluation.json and MLflow: only exception types, never text."""
    from imaging.federated.cross_site import error_summary

    reason = ("<class 'imaging.federated.worker.WorkerError'>:<'FileNotFoundError: [Errno 2] No such file: "
              "/data/O'BRIEN^SEAMUS_19570312/catalog.csv'>")
    out = error_summary(reason)
    assert out.startswith("WorkerError / FileNotFoundError at the site")
    assert "BRIEN" not in out and "/data" not in out and "1957" not in out
    assert error_summary("something went wrong") == "error at the site (its worker.log has the details)"
