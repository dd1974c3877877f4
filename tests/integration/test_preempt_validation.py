"""Preemption outside the training steps: a signal during validation (the epoch's training is kept
and the run resumes), and a signal during the rendezvous (handlers are installed before it)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import imaging.engine.loops as loops
import imaging.pipelines.train.run as train_pipeline
from imaging.engine.checkpoint import load_checkpoint
from imaging.pipelines.train.run import run
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = pytest.mark.integration

NO_REGISTRY = ["tracking.register=false", "tracking.review_cases=0", "tracking.log_checkpoints=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=4, shape=(24, 24, 12))


def _history(root: Path, run_id: str, key: str) -> list[int]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_signal_during_validation_keeps_the_epoch_and_resumes(tmp_path: Path, dataset: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_predict = loops.predict_volume
    calls = {"n": 0}

    def predict_then_signal(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        out = real_predict(*args, **kwargs)
        if calls["n"] == 1:  # first validation case of epoch 1: a real SIGUSR1 through the handler
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(loops, "predict_volume", predict_then_signal)
    first = run(compose_train(tmp_path, dataset, *NO_REGISTRY))
    assert first.preempted and first.epochs_done == 1 and calls["n"] == 1  # validation stopped after one case
    last = load_checkpoint(next(tmp_path.glob("runs/*/*/checkpoints/last.pt")))
    assert last["state"]["epoch"] == 1 and last["state"]["step_in_epoch"] == 0  # epoch 1's training kept
    assert _history(tmp_path, first.run_id, "train_loss") == [1]
    assert _history(tmp_path, first.run_id, "val_dice_mean") == []  # the interrupted validation is skipped
    monkeypatch.setattr(loops, "predict_volume", real_predict)
    second = run(compose_train(tmp_path, dataset, *NO_REGISTRY))
    assert not second.preempted and second.epochs_done == 3 and second.run_id == first.run_id
    assert _history(tmp_path, first.run_id, "train_loss") == [1, 2, 3]
    assert _history(tmp_path, first.run_id, "val_dice_mean") == [2, 3]


def test_signal_during_rendezvous_is_caught(tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """USR1 while init_process_group waits for the other nodes: the handler must already be there
    (the default action would kill the process); the run then stops at its first safe point."""
    real_setup = train_pipeline.setup

    def setup_with_signal(*args: Any, **kwargs: Any) -> Any:
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGUSR1)
        return real_setup(*args, **kwargs)

    monkeypatch.setattr(train_pipeline, "setup", setup_with_signal)
    result = run(compose_train(tmp_path, dataset, *NO_REGISTRY))
    # First safe point: after a step (this tiny epoch has one, so after epoch 1's training), not 3 epochs.
    assert result.preempted and result.epochs_done <= 1
    assert (tmp_path / "runs").exists() and next(tmp_path.glob("runs/*/*/checkpoints/last.pt")).is_file()
