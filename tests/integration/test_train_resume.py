"""Kill-and-resume: a preempted run continues the same MLflow run and ends with
exactly the weights of an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from imaging.engine.checkpoint import load_checkpoint
from imaging.launch.preempt import EXIT_PREEMPTED, PreemptionFlag
from imaging.pipelines.train.run import run
from tests.fixtures.train_data import compose_train, make_train_dataset, tiny_train_overrides

pytestmark = pytest.mark.integration

NO_REGISTRY = ["tracking.register=false", "tracking.review_cases=0", "tracking.log_checkpoints=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=6, shape=(24, 24, 12))


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(next(root.glob("runs/*/*/checkpoints/last.pt")))["model"]


def _runs(root: Path) -> list[mlflow.entities.Run]:
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo_seg")
    return client.search_runs([exp.experiment_id]) if exp else []


def _steps(root: Path, run_id: str, key: str) -> list[int]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run(compose_train(root, dataset, *NO_REGISTRY))
    assert not result.preempted and result.epochs_done == 3
    return root


def test_signal_after_epoch_resumes_same_run_and_weights(tmp_path: Path, dataset: Path, reference: Path) -> None:
    flag = PreemptionFlag().install()
    try:
        # A real SIGUSR1 through the installed handler, raised after epoch 1's checkpoint.
        first = run(compose_train(tmp_path, dataset, *NO_REGISTRY), flag=flag,
                    on_epoch_end=lambda epoch: os.kill(os.getpid(), signal.SIGUSR1) if epoch == 1 else None)
    finally:
        flag.uninstall()
    assert first.preempted and first.epochs_done == 1
    assert _runs(tmp_path)[0].info.status == "KILLED"
    second = run(compose_train(tmp_path, dataset, *NO_REGISTRY))
    assert not second.preempted and second.epochs_done == 3
    assert second.run_id == first.run_id
    runs = _runs(tmp_path)
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert runs[0].info.status == "FINISHED"
    assert _steps(tmp_path, first.run_id, "train_loss") == [1, 2, 3]
    assert _steps(tmp_path, first.run_id, "val_dice_liver") == [1, 2, 3]
    ref, got = _weights(reference), _weights(tmp_path)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


@pytest.mark.parametrize("workers", [0, 1])
def test_mid_epoch_preemption_resumes_exactly(tmp_path: Path, dataset: Path, reference: Path, workers: int) -> None:
    # The reference ran with 0 loader workers: patches are seeded per draw, so a
    # worker process draws exactly the same ones.
    flag = PreemptionFlag()
    flag.set()  # already requested: the loop stops after its first batch
    first = run(compose_train(tmp_path, dataset, *NO_REGISTRY, f"data.num_workers={workers}"), flag=flag)
    assert first.preempted and first.epochs_done == 0
    state = load_checkpoint(next(tmp_path.glob("runs/demo_seg/*/checkpoints/last.pt")))["state"]
    assert state["step_in_epoch"] == 1
    second = run(compose_train(tmp_path, dataset, *NO_REGISTRY, f"data.num_workers={workers}"))
    assert second.run_id == first.run_id and second.epochs_done == 3
    ref, got = _weights(reference), _weights(tmp_path)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_app_exits_with_preempted_code_on_sigusr1(tmp_path: Path, dataset: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "imaging.train",
            *tiny_train_overrides(tmp_path, dataset, *NO_REGISTRY, "trainer.max_epochs=500")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "epoch 1/500" in line:  # the first epoch's checkpoint exists: interrupt now
                proc.send_signal(signal.SIGUSR1)
                break
        proc.stdout.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == EXIT_PREEMPTED
    ckpt = load_checkpoint(next(tmp_path.glob("runs/demo_seg/*/checkpoints/last.pt")))
    done = ckpt["state"]["epoch"]
    assert 1 <= done < 500
    # The requeued job (same command line) continues the same run to the end.
    resume_args = [*args[:3], *tiny_train_overrides(tmp_path, dataset, *NO_REGISTRY,
                                                     f"trainer.max_epochs={done + 1}")]
    again = subprocess.run(resume_args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_id == ckpt["state"]["run_id"]
    assert _steps(tmp_path, runs[0].info.run_id, "train_loss") == list(range(1, done + 2))


def test_run_dir_guards_against_resuming_another_network_or_dataset(tmp_path: Path, dataset: Path) -> None:
    from imaging.plan.train import ConfigError

    first = run(compose_train(tmp_path, dataset, *NO_REGISTRY, "trainer.max_epochs=1"))
    # Another network is another configuration: its own run dir and MLflow run, never a resume.
    wider = run(compose_train(tmp_path, dataset, *NO_REGISTRY, "trainer.max_epochs=1", "model.channels=[4,8,32]"))
    assert wider.run_id != first.run_id and wider.run_dir != first.run_dir and wider.epochs_done == 1
    # A run dir forced onto another configuration is refused, naming what differs.
    with pytest.raises(ConfigError, match="model.channels") as excinfo:
        run(compose_train(tmp_path, dataset, *NO_REGISTRY, "trainer.max_epochs=1", "model.channels=[4,8,64]",
                          f"run_dir={first.run_dir}"))
    assert excinfo.value.key == "run_dir"
    # The same configuration again: finished, nothing to do.
    again = run(compose_train(tmp_path, dataset, *NO_REGISTRY, "trainer.max_epochs=1"))
    assert again.already_done and again.run_id == first.run_id and not again.registered
    other = make_train_dataset(tmp_path / "other", subjects=7, shape=(24, 24, 12), seed=5)
    second = run(compose_train(tmp_path, other, *NO_REGISTRY, "trainer.max_epochs=1"))
    assert second.run_id != first.run_id  # another catalog: a new run, not a resume
    assert second.epochs_done == 1
