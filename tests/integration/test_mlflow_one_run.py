"""One training, one run: online -> server down (offline store) -> requeued with the server back.

A real ``mlflow server`` is stopped and restarted between the job's segments (each segment
stops itself after an epoch, as a preempted Slurm job does, and the next one resumes the run
dir). Afterwards the server must hold one run with every epoch once, the registered version
must point at it, and ``imaging mlflow sync`` must add neither a run nor a point.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from imaging.cli import main as cli
from imaging.launch.preempt import PreemptionFlag
from imaging.pipelines.train.run import TrainResult, run
from tests.fixtures.mlflow_server import running_server
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = pytest.mark.integration

EXPERIMENT = "one_run_exp"


def _segment(tmp_path: Path, dataset: Path, uri: str, stop_after: int | None) -> TrainResult:
    flag = PreemptionFlag()
    cfg = compose_train(tmp_path, dataset, f"tracking.uri={uri}", f"tracking.experiment_name={EXPERIMENT}",
                        "tracking.connect_timeout_s=2", "trainer.max_epochs=3")
    return run(cfg, flag=flag, on_epoch_end=lambda epoch: flag.set() if epoch == stop_after else None)


def _history(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_outage_and_requeue_are_one_run_after_sync(tmp_path: Path) -> None:
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    with running_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as server:
        first = _segment(tmp_path, dataset, server.uri, stop_after=1)
        assert first.preempted and first.run_id
        server.stop()  # the server goes down; the requeued job logs offline
        second = _segment(tmp_path, dataset, server.uri, stop_after=2)
        assert second.preempted and second.epochs_done == 2
        run_dir = next((tmp_path / "runs" / EXPERIMENT).iterdir())
        assert (run_dir / "mlflow-offline" / "train").is_dir()
        server.start()  # back: the next requeue finishes the training online
        third = _segment(tmp_path, dataset, server.uri, stop_after=None)
        assert not third.preempted and third.epochs_done == 3 and third.registered

        client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None

        def check() -> None:
            runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
            assert [r.info.run_id for r in runs] == [first.run_id]
            assert third.run_id == first.run_id
            for key in ("train_loss", "val_dice_mean", "lr"):
                assert _history(client, first.run_id, key) == [1, 2, 3], key  # every epoch, once
            assert runs[0].info.status == "FINISHED"
            versions = client.search_model_versions(f"name='{EXPERIMENT}'")
            assert [v.run_id for v in versions] == [first.run_id]

        check()
        assert cli(["mlflow", "sync", str(run_dir), "--tracking-uri", server.uri]) == 0
        check()
