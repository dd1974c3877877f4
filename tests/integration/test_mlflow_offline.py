"""Compute nodes without a route to the server: a training logs into a file store
in its run dir, and `imaging mlflow sync RUN_DIR` uploads it to a real server on
PostgreSQL, idempotently (a second sync adds nothing)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from imaging.cli import main as cli
from imaging.pipelines.train.run import run
from imaging.tracking.registry import load_bundle
from imaging.tracking.sync import OFFLINE_RUN_TAG, sync_run_dir
from tests.fixtures.mlflow_server import MlflowServer, _free_port
from tests.fixtures.train_data import compose_train, make_train_dataset

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _snapshot(client: MlflowClient, run_id: str) -> tuple:
    run = client.get_run(run_id)
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
    arts = sorted(a.path for a in client.list_artifacts(run_id))
    return history, dict(run.data.params), arts, len(run.inputs.dataset_inputs)


def test_unreachable_server_logs_offline_and_sync_uploads_once(tmp_path: Path,
                                                               mlflow_pg_server: MlflowServer) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    result = run(compose_train(tmp_path, dataset, f"tracking.uri={dead}", "trainer.max_epochs=2",
                               "tracking.experiment_name=offline_exp", "tracking.connect_timeout_s=2"))
    assert not result.preempted and result.run_id
    run_dir = next((tmp_path / "runs" / "offline_exp").iterdir())
    store = run_dir / "mlflow-offline" / "train"
    assert (store / "SERVER").read_text().strip() == dead
    assert not (tmp_path / "mlflow").exists()  # not the embedded store either

    uri = mlflow_pg_server.uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("some_other_experiment")  # a process's leftover state must not matter
    assert cli(["mlflow", "sync", str(run_dir), "--tracking-uri", uri]) == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("offline_exp")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags[OFFLINE_RUN_TAG] == result.run_id
    synced = runs[0].info.run_id
    assert runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(synced, "train_loss")) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(synced, "val_dice_liver")) == [1, 2]
    offline = MlflowClient(tracking_uri=store.resolve().as_uri())
    assert _snapshot(client, synced)[0] == _snapshot(offline, result.run_id)[0]  # same points, same steps
    assert {"split.json", "config", "review", "checkpoints"} <= set(_snapshot(client, synced)[2])
    versions = client.search_model_versions("name='offline_exp'")
    assert len(versions) == 1 and versions[0].run_id == synced
    assert client.get_model_version_by_alias("offline_exp", "candidate").version == versions[0].version
    bundle = load_bundle("models:/offline_exp@candidate", tracking_uri=uri)
    assert bundle.run_id == synced and bundle.labels[1] == "liver"
    note = client.get_run(synced).data.tags["mlflow.note.content"]
    assert f"#/experiments/{exp.experiment_id}/runs/{synced}" in note or "offline_exp v1" in note

    before = _snapshot(client, synced)
    again = sync_run_dir(run_dir, uri)
    assert [r.added() for r in again] == [0] and again[0].runs_existing == 1
    assert _snapshot(client, synced) == before
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert len(client.search_model_versions("name='offline_exp'")) == 1
