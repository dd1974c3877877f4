"""`imaging submit infer model=models:/NAME@ALIAS`: the alias is pinned to a version at submission.

Issue 29 (10): each array task resolved the alias when it started, so a promotion while
the array waited in the queue put two versions into one report. Oracle: a real MLflow
registry (sqlite store, MlflowClient) and the rendered sbatch text; what a task would load
is resolved from the job's own command line after a later promotion.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from mlflow import MlflowClient

from imaging.apps.submit import main as submit_main
from imaging.launch.submit import array_model_uri, compose
from imaging.tracking.registry import parse_model_uri, resolve_version


@pytest.fixture
def registry(tmp_path: Path) -> MlflowClient:
    """``tiny`` v1 and v2 in the project's embedded store, ``@champion`` on v1."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("tiny")
    for _ in range(2):
        client.create_model_version("tiny", source=(tmp_path / "artifacts").as_uri())
    client.set_registered_model_alias("tiny", "champion", "1")
    return client


@pytest.fixture
def fake_sbatch(tmp_path: Path) -> Path:
    """An `sbatch` stand-in that prints a job id (the script is what is tested)."""
    exe = tmp_path / "sbatch"
    exe.write_text("#!/bin/bash\necho 4242\n")
    exe.chmod(0o755)
    return exe


def _infer(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "dataset").mkdir(exist_ok=True)
    (tmp_path / "dataset" / "catalog.csv").write_text("series_key\n")
    return ["infer", "model=models:/tiny@champion", f"input={tmp_path / 'dataset'}", f"output_dir={tmp_path / 'pred'}",
            f"paths.root_dir={tmp_path}", "demo_key=true", "launcher=slurm", "launcher.array_tasks=3",
            f"launcher.jobs_index_dir={tmp_path / 'index'}", *extra]


def _job_overrides(script: str) -> list[str]:
    """The Hydra overrides of the job's command (after ``imaging infer``), shard ones aside."""
    cmd = next(line for line in script.splitlines() if line.startswith("exec srun "))
    words = shlex.split(cmd)
    return [w for w in words[words.index("infer") + 1:] if "=" in w and not w.startswith("shard.")]


def test_alias_pinned_at_submission_survives_a_promotion(registry: MlflowClient, fake_sbatch: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert submit_main(_infer(tmp_path, f"launcher.sbatch={fake_sbatch}")) == 0
    out = capsys.readouterr().out
    assert "models:/tiny/1 (models:/tiny@champion at submission)" in out
    script = (tmp_path / "pred" / "slurm" / "infer.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script
    assert "model_uri=models:/tiny/1" in script and "@champion" not in script
    record = json.loads((tmp_path / "index" / "4242.json").read_text())
    assert (record["model_uri"], record["model_pinned_from"]) == ("models:/tiny/1", "models:/tiny@champion")
    # v2 promoted while the array waits: every task still composes and loads v1.
    registry.set_registered_model_alias("tiny", "champion", "2")
    cfg = compose("infer", _job_overrides(script))
    name, alias, version = parse_model_uri(str(cfg.model_uri))
    assert alias is None and str(resolve_version(registry, name, version or "").version) == "1"
    assert str(resolve_version(registry, "tiny", "champion").version) == "2"  # the alias did move


def test_version_given_is_kept_and_unknown_alias_is_refused(registry: MlflowClient, fake_sbatch: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = [a.replace("@champion", "/2") for a in _infer(tmp_path, f"launcher.sbatch={fake_sbatch}")]
    assert submit_main(args) == 0
    script = (tmp_path / "pred" / "slurm" / "infer.sbatch").read_text()
    assert "model_uri=models:/tiny/2" in script and "at submission" not in capsys.readouterr().out
    # An alias the registry does not have: exit 2, one line naming the key, nothing submitted.
    (tmp_path / "pred" / "slurm" / "infer.sbatch").unlink()
    bad = [a.replace("@champion", "@production") for a in _infer(tmp_path, f"launcher.sbatch={fake_sbatch}")]
    assert submit_main(bad) == 2
    err = capsys.readouterr().err
    assert re.search(r"model=models:/tiny@production: .*production", err), err
    assert not (tmp_path / "pred" / "slurm" / "infer.sbatch").exists()
    # A dry run says the job would fail and renders the script unpinned.
    assert submit_main(["--dry-run", *bad]) == 0
    assert "the job would fail" in capsys.readouterr().err
    assert "model_uri=models:/tiny@production" in (tmp_path / "pred" / "slurm" / "infer.sbatch").read_text()


def test_no_store_is_refused_not_created(fake_sbatch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert submit_main(_infer(tmp_path, f"launcher.sbatch={fake_sbatch}")) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


def test_array_tasks_share_the_version_the_first_task_resolved(registry: MlflowClient, tmp_path: Path) -> None:
    """Arrays `imaging submit` could not pin (a pipeline's infer job: the model is registered by the
    training job before it): the first task resolves the alias, every later task of that array reads it."""
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    out, array = tmp_path / "pred", {"SLURM_ARRAY_JOB_ID": "77"}
    first = array_model_uri("models:/tiny@champion", out, store, array)
    registry.set_registered_model_alias("tiny", "champion", "2")  # promoted while the array runs
    later = array_model_uri("models:/tiny@champion", out, store, array)
    assert first == later == "models:/tiny/1"
    assert array_model_uri("models:/tiny@champion", out, store, {"SLURM_ARRAY_JOB_ID": "78"}) == "models:/tiny/2"
    assert array_model_uri("models:/tiny@champion", out, store, {}) == "models:/tiny@champion"  # not an array
    assert array_model_uri("models:/tiny/1", out, store, array) == "models:/tiny/1"
    assert sorted(p.name for p in (out / "work").iterdir()) == ["model-pin.77.json", "model-pin.78.json"]
