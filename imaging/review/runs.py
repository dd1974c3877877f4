"""MLflow training runs compared: tables, learning curves, Dice per label, config differences.

What ``imaging train`` logs (see :mod:`imaging.tracking.runs`): params are the
flattened resolved config (``model.name``, ``trainer.lr``...) plus ``dataset.*``
counts; metrics per epoch ``train_loss``, ``lr``, ``val_dice_<label>``,
``val_dice_mean`` and ``best_<monitor>``; tags ``dataset.catalog_sha256``,
``git_commit``; artifacts ``config/train.yaml``, ``split.json``,
``review/<series_key>.png``, ``checkpoints/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from imaging.review.plots import LABEL_COLOURS
from imaging.tracking.store import client_for as client_for  # re-exported for notebooks

DICE_PREFIX = "val_dice_"
# Params that differ between runs by construction and say nothing about the setup.
_NOISE = ("paths.", "hydra.", "run_dir", "data.cache_dir", "data.dataset_dir")
CURVE_UNITS = {"train_loss": "loss (Dice + CE)", "val_dice_mean": "Dice (0-1)", "lr": "learning rate",
               "best_dice_mean": "Dice (0-1)"}


def experiment_runs(client: MlflowClient, experiment_name: str, max_results: int = 100) -> list[Run]:
    """Runs of an experiment, newest first.

    Raises:
        ValueError: no experiment of that name in the store (lists the ones there).
    """
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"MLflow experiment '{experiment_name}' not found; experiments in the store: {known}")
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                   max_results=max_results))


def run_label(run: Run) -> str:
    """``<run name> (<id prefix>)``: unique and readable in legends."""
    return f"{run.info.run_name or 'run'} ({run.info.run_id[:6]})"


def dice_labels(runs: Sequence[Run]) -> list[str]:
    """Label names with a ``val_dice_<name>`` metric in any run (``mean`` excluded), sorted."""
    names = {k[len(DICE_PREFIX):] for r in runs for k in r.data.metrics if k.startswith(DICE_PREFIX)}
    return sorted(names - {"mean"})


def runs_table(runs: Sequence[Run], metric: str = "best_dice_mean") -> pd.DataFrame:
    """One row per run: name, status, start, epochs, the headline metric, per-label Dice, dataset hash."""
    labels = dice_labels(runs)
    rows = []
    for r in runs:
        m, p, t = r.data.metrics, r.data.params, r.data.tags
        rows.append({
            "run": run_label(r), "run_id": r.info.run_id, "status": r.info.status,
            "start": pd.to_datetime(r.info.start_time, unit="ms"), "model": p.get("model.name", ""),
            "epochs": p.get("trainer.max_epochs", ""), metric: m.get(metric, np.nan),
            **{f"dice_{n}": m.get(DICE_PREFIX + n, np.nan) for n in labels},
            "dataset_sha256": t.get("dataset.catalog_sha256", "")[:12],
            "n_train/val": f"{p.get('dataset.n_train', '?')}/{p.get('dataset.n_val', '?')}",
        })
    return pd.DataFrame(rows)


def best_run(runs: Sequence[Run], metric: str = "best_dice_mean", mode: str = "max") -> Run:
    """The finished run with the best value of ``metric``.

    Raises:
        ValueError: no finished run has the metric (names it).
    """
    scored = [r for r in runs if r.info.status == "FINISHED" and np.isfinite(r.data.metrics.get(metric, np.nan))]
    if not scored:
        raise ValueError(f"no FINISHED run has the metric '{metric}'")
    key = (lambda r: r.data.metrics[metric]) if mode == "max" else (lambda r: -r.data.metrics[metric])
    return max(scored, key=key)


def metric_histories(client: MlflowClient, runs: Sequence[Run], keys: Sequence[str]) -> pd.DataFrame:
    """Long table ``run, run_id, metric, epoch, value`` of every (run, metric) history."""
    rows = []
    for r in runs:
        for key in keys:
            for m in client.get_metric_history(r.info.run_id, key):
                rows.append({"run": run_label(r), "run_id": r.info.run_id, "metric": key, "epoch": m.step,
                             "value": m.value})
    return pd.DataFrame(rows, columns=["run", "run_id", "metric", "epoch", "value"])


def learning_curves(histories: pd.DataFrame, keys: Sequence[str] = ("train_loss", "val_dice_mean")) -> Figure:
    """One panel per metric, one line per run, epoch on x.

    Raises:
        ValueError: none of ``keys`` has any history (names them).
    """
    present = [k for k in keys if (histories["metric"] == k).any()]
    if not present:
        raise ValueError(f"no history for any of the metrics {list(keys)}")
    fig = Figure(figsize=(6 * len(present), 4), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, key in zip(axes, present, strict=True):
        sub = histories[histories["metric"] == key]
        for i, (run, h) in enumerate(sub.groupby("run", sort=False)):
            h = h.sort_values("epoch")
            ax.plot(h["epoch"], h["value"], marker="o", markersize=3, color=LABEL_COLOURS[i % len(LABEL_COLOURS)],
                    label=run)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(CURVE_UNITS.get(key, key))
        if key.startswith(("val_dice", "best_dice")):
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="run", title_fontsize=7)
    fig.suptitle("Learning curves")
    return fig


def dice_per_label(runs: Sequence[Run]) -> Figure:
    """Grouped bars: last validation Dice per label (x) and run (colour), with the mean as a line.

    Raises:
        ValueError: no run has per-label Dice metrics.
    """
    labels = dice_labels(runs)
    if not labels:
        raise ValueError("no run has val_dice_<label> metrics (was it a segmentation run?)")
    fig = Figure(figsize=(max(6.0, 1.6 * len(labels) * max(1, len(runs)) ** 0.5), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(labels))
    for i, r in enumerate(runs):
        values = [r.data.metrics.get(DICE_PREFIX + n, np.nan) for n in labels]
        colour = LABEL_COLOURS[i % len(LABEL_COLOURS)]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, color=colour, label=run_label(r))
        mean = r.data.metrics.get(DICE_PREFIX + "mean")
        if mean is not None:
            ax.axhline(mean, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_xlabel("label")
    ax.set_ylabel("Dice (0-1), last validation")
    ax.set_title("Validation Dice per label (dashed: run mean)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, title="run", title_fontsize=7)
    return fig


def config_diff(runs: Sequence[Run], *, include_noise: bool = False) -> pd.DataFrame:
    """Params whose value differs between runs: one row per param, one column per run.

    A param missing from a run shows as ``<unset>``. Paths and Hydra internals are
    left out unless ``include_noise`` (they differ by construction). With one run
    (nothing to compare) the table is empty.
    """
    if len(runs) < 2:
        return pd.DataFrame(columns=[run_label(r) for r in runs])
    keys = sorted({k for r in runs for k in r.data.params})
    if not include_noise:
        keys = [k for k in keys if not k.startswith(_NOISE)]
    table: dict[str, list[str]] = {}
    for key in keys:
        values = [r.data.params.get(key, "<unset>") for r in runs]
        if len(set(values)) > 1:
            table[key] = values
    out = pd.DataFrame.from_dict(table, orient="index", columns=[run_label(r) for r in runs])
    out.index.name = "param"
    return out


def download_review_images(client: MlflowClient, run_id: str, dst: str | os.PathLike[str],
                           folder: str = "review") -> list[Path]:
    """Download a run's ``review/*.png`` into ``dst``; returns the local files, sorted."""
    names = [a.path for a in client.list_artifacts(run_id, folder) if a.path.endswith(".png")]
    Path(dst).mkdir(parents=True, exist_ok=True)
    return sorted(Path(client.download_artifacts(run_id, name, str(dst))) for name in names)


def image_grid(paths: Sequence[str | os.PathLike[str]], title: str = "", columns: int = 1) -> Figure:
    """Show PNGs (already titled and labelled by whoever drew them) one per panel.

    Raises:
        ValueError: no image given.
    """
    import matplotlib.image as mpimg

    if not paths:
        raise ValueError("no review image to show")
    rows = int(np.ceil(len(paths) / columns))
    images = [mpimg.imread(str(p)) for p in paths]
    h, w = images[0].shape[:2]
    fig = Figure(figsize=(11 * columns, 11 * columns * rows * h / w / columns), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, img, path in zip(axes, images, paths, strict=False):
        ax.imshow(img)
        ax.set_title(Path(path).name, fontsize=8)
        ax.axis("off")
    for ax in axes[len(images):]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def model_versions(client: MlflowClient, name: str) -> pd.DataFrame:
    """Versions of a registered model: version, aliases, status, training run and its headline metric.

    Raises:
        ValueError: no registered model of that name (lists the ones there).
    """
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        known = sorted(m.name for m in client.search_registered_models())
        raise ValueError(f"no registered model '{name}' in the store; registered models: {known}") from exc
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows: list[dict[str, Any]] = []
    for v in client.search_model_versions(f"name='{name}'"):
        run_name, best = "", np.nan
        if v.run_id:
            run = client.get_run(v.run_id)
            run_name, best = run.info.run_name or "", run.data.metrics.get("best_dice_mean", np.nan)
        rows.append({"version": int(v.version), "aliases": ", ".join(sorted(aliases.get(str(v.version), []))),
                     "status": v.status, "run_id": v.run_id, "run": run_name, "best_dice_mean": best,
                     "created": pd.to_datetime(v.creation_timestamp, unit="ms")})
    return pd.DataFrame(rows).sort_values("version", ascending=False).reset_index(drop=True)


def version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The newest registered version of ``name`` made by ``run_id`` (None when it registered none)."""
    versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    return str(max(versions)) if versions else None
