"""A cluster's MLflow: one tracking server on a real PostgreSQL, served artifacts,
many jobs logging at once, and a server restart in the middle of them.

A 2-rank DDP training (gloo, torchrun) and a 3-task inference array (three
concurrent ``imaging infer`` processes, as a Slurm array runs them) log to the
same server while it is restarted: every run finishes, every metric step is
logged once, one model version per model with the right alias, and nothing
reports a locked database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from imaging.models.registry import build_network
from imaging.tracking.registry import register_model
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.train_data import make_train_dataset, tiny_train_overrides
from tests.integration.test_train_ddp import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [4.0, 4.0, 5.0],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [32, 32, 16]}
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
LOCKED = ("database is locked", "deadlock detected", "could not serialize access")


def _register_tiny(uri: str) -> None:
    torch.manual_seed(0)
    net_cfg = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8],
               "strides": [2], "num_res_units": 0}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.set_experiment("pg_models")
    with mlflow.start_run(experiment_id=exp.experiment_id):
        register_model(build_network(net_cfg), network_config=net_cfg, preprocessing=PRE, labels=LABELS,
                       task="segmentation", name="pg_tiny", alias="champion")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                        "SLURM_NTASKS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _wait_for_step(client: MlflowClient, experiment: str, key: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, key):
            return
        time.sleep(0.5)
    raise AssertionError(f"no {key} logged in {experiment} within {timeout}s")


def test_ddp_training_and_inference_array_log_at_once_through_a_restart(
        tmp_path: Path, mlflow_pg_server: MlflowServer) -> None:
    uri = mlflow_pg_server.uri
    dataset = make_train_dataset(tmp_path / "ds", subjects=6, shape=(24, 24, 12))
    _register_tiny(uri)
    train = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
             "-m", "imaging.train", *tiny_train_overrides(
                 tmp_path, dataset, "trainer.max_epochs=2", "trainer.accelerator=cpu", "tracking.review_cases=1",
                 f"tracking.uri={uri}", "tracking.experiment_name=pg_train", "tracking.offline_fallback=false")]
    infer = [sys.executable, "-m", "imaging", "infer", "model=models:/pg_tiny@champion", f"input={dataset}",
             f"output_dir={tmp_path / 'infer'}", f"paths.root_dir={tmp_path}", "demo_key=true", "seg.enabled=false",
             f"tracking.uri={uri}", "tracking.experiment_name=pg_infer", "tracking.offline_fallback=false"]
    logs = {name: open(tmp_path / f"{name}.log", "w+b") for name in ("train", "infer0", "infer1", "infer2")}  # noqa: SIM115
    procs = {"train": subprocess.Popen(train, cwd=REPO, env=_env(), stdout=logs["train"], stderr=subprocess.STDOUT)}
    for i in range(3):
        procs[f"infer{i}"] = subprocess.Popen(
            infer, cwd=REPO, stdout=logs[f"infer{i}"], stderr=subprocess.STDOUT,
            env=_env(SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="0"))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        _wait_for_step(client, "pg_train", "train_loss")
        assert procs["train"].poll() is None, "training ended before the restart: nothing was tested"
        mlflow_pg_server.restart(down_s=2.0)  # the jobs' HTTP retries carry them over the gap
        for proc in procs.values():
            proc.wait(timeout=600)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = {}
    for name, fh in logs.items():
        fh.seek(0)
        outputs[name] = fh.read().decode(errors="replace")
        fh.close()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {outputs[name][-3000:]}"
    server_log = mlflow_pg_server.log.read_text(errors="replace")
    assert server_log.count("=== start") == 2
    for text in [server_log, *outputs.values()]:
        assert not [m for m in LOCKED if m in text.lower()]

    # Training: one finished run, every metric at steps 1 and 2 exactly once, one version, alias right.
    runs = client.search_runs([client.get_experiment_by_name("pg_train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    train_run = runs[0]
    assert {"train_loss", "val_dice_liver", "val_dice_mean"} <= set(train_run.data.metrics)
    for key in train_run.data.metrics:
        assert sorted(m.step for m in client.get_metric_history(train_run.info.run_id, key)) == [1, 2], key
    versions = client.search_model_versions("name='pg_train'")
    assert len(versions) == 1 and versions[0].run_id == train_run.info.run_id
    assert client.get_model_version_by_alias("pg_train", "candidate").version == versions[0].version
    assert len(client.search_model_versions("name='pg_tiny'")) == 1

    # Inference: three finished shard runs covering the 7 catalog rows once (6 ok, 1 broken).
    inf = client.search_runs([client.get_experiment_by_name("pg_infer").experiment_id])
    assert len(inf) == 3 and all(r.info.status == "FINISHED" for r in inf)
    assert sorted(r.data.params["shard"] for r in inf) == ["0/3", "1/3", "2/3"]
    for run in inf:
        for key in ("n_series", "n_ok", "n_error"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 1
    assert sum(r.data.metrics["n_series"] for r in inf) == 7
    assert sum(r.data.metrics["n_ok"] for r in inf) == 6 and sum(r.data.metrics["n_error"] for r in inf) == 1
    # Lineage: the inference runs' input is the training run's dataset (same catalog, same name).
    train_ds = client.get_run(train_run.info.run_id).inputs.dataset_inputs[0].dataset
    for run in inf:
        full = client.get_run(run.info.run_id)
        assert full.inputs.dataset_inputs[0].dataset.name == train_ds.name
        note = full.data.tags["mlflow.note.content"]
        assert "[pg_tiny v1](#/models/pg_tiny/versions/1)" in note and "### Per-series results" in note
        assert f"`{train_ds.name}`" in note
    assert all(p.info.run_id for p in inf)


def test_long_descriptions_are_stored_intact(mlflow_pg_server: MlflowServer) -> None:
    uri = mlflow_pg_server.uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # 5000 characters, non-ASCII and markdown included: PostgreSQL must not cut or re-encode them.
    unit = "Dice på lever: 0,93 · Ångström µm ≤ 5 mm | `code` **bold**\n"
    text = (unit * (5000 // len(unit) + 1))[:5000]
    assert len(text) == 5000
    exp = client.create_experiment("pg_long_text")
    run = client.create_run(exp)
    client.set_tag(run.info.run_id, "mlflow.note.content", text)
    client.create_registered_model("pg_long", description=text)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.tags["mlflow.note.content"] == text
    assert client.get_registered_model("pg_long").description == text
