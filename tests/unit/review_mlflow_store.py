"""A real SQLite-backed MLflow store holding what ``imaging train`` logs, for the review tests.

Two training runs of experiment ``demo_seg`` (different lr and epochs), each with
the params, per-epoch metrics, tags and review PNGs the training loop writes
(names as in :mod:`imaging.tracking.runs`); the better one registered as
``demo_seg`` version 1 with alias ``candidate``, the other as version 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

CATALOG_SHA = "ab" * 32


@dataclass
class Store:
    uri: str
    client: MlflowClient
    good: str  # run ids
    poor: str
    experiment_id: str


def _png(path: Path, title: str) -> Path:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.imshow([[0, 1], [1, 0]], cmap="gray")
    ax.set_title(title)
    fig.savefig(path, format="png")
    return path


def _run(client: MlflowClient, exp: str, name: str, lr: str, epochs: int, dice: dict[str, list[float]],
         tmp: Path) -> str:
    run = client.create_run(exp, run_name=name)
    rid = run.info.run_id
    params = {"model.name": "unet", "model.channels": "[4, 8, 16]", "trainer.lr": lr,
              "trainer.max_epochs": str(epochs), "data.labels": "['liver', 'spleen']", "data.patch_size": "[16, 16, 8]",
              "data.split.fold": "0", "data.split.folds": "3", "data.modality": "CT", "data.task": "segmentation",
              "paths.root_dir": str(tmp / name), "run_dir": str(tmp / name / "run"),
              "dataset.n_rows": "12", "dataset.n_ok": "10", "dataset.n_items": "8", "dataset.n_subjects": "4",
              "dataset.n_train": "6", "dataset.n_val": "2"}
    metrics = []
    for epoch in range(1, epochs + 1):
        metrics += [Metric("train_loss", 1.5 / epoch, 0, epoch), Metric("lr", float(lr) / epoch, 0, epoch)]
        values = {k: v[epoch - 1] for k, v in dice.items()}
        metrics += [Metric(f"val_dice_{k}", v, 0, epoch) for k, v in values.items()]
        mean = sum(values.values()) / len(values)
        metrics.append(Metric("val_dice_mean", mean, 0, epoch))
        best = max(sum(v[e] for v in dice.values()) / len(dice) for e in range(epoch))
        metrics.append(Metric("best_dice_mean", best, 0, epoch))
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("dataset.catalog_sha256", CATALOG_SHA), RunTag("git_commit", "abc123"),
                           RunTag("torch", "2.x")])
    for key in ("caseA", "caseB"):
        client.log_artifact(rid, str(_png(tmp / f"{key}.png", f"{name} {key}")), "review")
    client.log_text(rid, "model: unet\n", "config/train.yaml")
    client.set_terminated(rid, "FINISHED")
    return rid


def make_store(tmp: Path) -> Store:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("demo_seg", artifact_location=(tmp / "artifacts").as_uri())
    # Dice peaks at epoch 2 then drops: best-epoch and last values differ.
    good = _run(client, exp, "fold0-lr3e-3", "0.003", 3, {"liver": [0.5, 0.9, 0.8], "spleen": [0.3, 0.7, 0.6]}, tmp)
    poor = _run(client, exp, "fold0-lr1e-1", "0.1", 2, {"liver": [0.2, 0.4], "spleen": [0.1, 0.2]}, tmp)
    client.create_registered_model("demo_seg")
    for rid in (good, poor):
        mv = client.create_model_version("demo_seg", f"{client.get_run(rid).info.artifact_uri}/model", rid)
        client.set_model_version_tag("demo_seg", mv.version, "task", "segmentation")
    client.set_registered_model_alias("demo_seg", "candidate", "1")
    return Store(uri, client, good, poor, exp)
