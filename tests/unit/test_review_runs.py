"""Comparing MLflow runs (imaging.review.runs) against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imaging.review.runs import (
    best_run,
    config_diff,
    dice_labels,
    dice_per_label,
    download_review_images,
    experiment_runs,
    image_grid,
    learning_curves,
    metric_histories,
    model_versions,
    run_label,
    runs_table,
    version_of_run,
)
from tests.unit.review_mlflow_store import CATALOG_SHA, Store, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    # One store per module: creating an SQLite store (schema migrations) takes seconds.
    return make_store(tmp_path_factory.mktemp("mlflow"))


def test_runs_table_and_best_run(store: Store) -> None:
    runs = experiment_runs(store.client, "demo_seg")
    assert {r.info.run_id for r in runs} == {store.good, store.poor}
    assert dice_labels(runs) == ["liver", "spleen"]
    table = runs_table(runs).set_index("run_id")
    assert table.loc[store.good, "best_dice_mean"] == pytest.approx(0.8)
    assert table.loc[store.good, "dice_liver"] == pytest.approx(0.8)  # last validation, not the best
    assert table.loc[store.poor, "epochs"] == "2"
    assert table.loc[store.good, "dataset_sha256"] == CATALOG_SHA[:12]
    assert table.loc[store.good, "n_train/val"] == "6/2"
    assert best_run(runs).info.run_id == store.good
    assert best_run(runs, "train_loss", mode="min").info.run_id == store.good  # 0.5 after 3 epochs vs 0.75
    with pytest.raises(ValueError, match="no FINISHED run has the metric 'auc'"):
        best_run(runs, "auc")
    with pytest.raises(ValueError, match="experiment 'nope' not found.*demo_seg"):
        experiment_runs(store.client, "nope")


def test_learning_curves_and_dice(store: Store) -> None:
    runs = experiment_runs(store.client, "demo_seg")
    hist = metric_histories(store.client, runs, ["train_loss", "val_dice_mean"])
    good = hist[(hist["run_id"] == store.good) & (hist["metric"] == "val_dice_mean")].sort_values("epoch")
    np.testing.assert_allclose(good["value"], [0.4, 0.8, 0.7])
    fig = learning_curves(hist, ["train_loss", "val_dice_mean", "hd95_liver"])  # absent metrics are left out
    assert [ax.get_title() for ax in fig.axes] == ["train_loss", "val_dice_mean"]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert fig.axes[1].get_ylabel() == "Dice (0-1)" and fig.axes[1].get_ylim() == (0, 1)
    assert len(fig.axes[0].get_lines()) == 2 and fig.axes[0].get_legend() is not None
    with pytest.raises(ValueError, match="no history"):
        learning_curves(hist, ["auc"])
    bars = dice_per_label(runs).axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["liver", "spleen"]
    assert "Dice" in bars.get_ylabel() and bars.get_xlabel() == "label"
    heights = sorted(round(p.get_height(), 3) for p in bars.patches)
    assert heights == [0.2, 0.4, 0.6, 0.8]


def test_config_diff(store: Store) -> None:
    runs = experiment_runs(store.client, "demo_seg")
    diff = config_diff(runs)
    assert set(diff.index) == {"trainer.lr", "trainer.max_epochs"}  # paths differ too, but are noise
    assert set(diff.loc["trainer.lr"]) == {"0.003", "0.1"}
    assert list(diff.columns) == [run_label(r) for r in runs]
    assert {"paths.root_dir", "run_dir"} <= set(config_diff(runs, include_noise=True).index)
    assert config_diff(runs[:1]).empty


def test_review_images_and_versions(store: Store, tmp_path: Path) -> None:
    images = download_review_images(store.client, store.good, tmp_path / "dl")
    assert [p.name for p in images] == ["caseA.png", "caseB.png"] and all(p.is_file() for p in images)
    fig = image_grid(images, title="review")
    assert [ax.get_title() for ax in fig.axes] == ["caseA.png", "caseB.png"]
    with pytest.raises(ValueError, match="no review image"):
        image_grid([])
    versions = model_versions(store.client, "demo_seg")
    assert list(versions["version"]) == [2, 1]
    assert versions.set_index("version").loc[1, "aliases"] == "candidate"
    assert versions.set_index("version").loc[1, "best_dice_mean"] == pytest.approx(0.8)
    assert version_of_run(store.client, "demo_seg", store.poor) == "2"
    assert version_of_run(store.client, "demo_seg", "0" * 32) is None
    with pytest.raises(ValueError, match=r"no registered model 'other'.*\['demo_seg'\]"):
        model_versions(store.client, "other")
