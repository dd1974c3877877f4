"""describe_run / describe_model_version write what a reviewer sees first, in a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from imaging.tracking.summary import (
    NOTE_TAG,
    best_step,
    describe_model_version,
    describe_run,
    dice_rows,
)
from tests.unit.review_mlflow_store import CATALOG_SHA, Store, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    # One store per module: creating an SQLite store (schema migrations) takes seconds.
    return make_store(tmp_path_factory.mktemp("mlflow"))


def test_dice_at_the_best_and_the_last_epoch(store: Store) -> None:
    assert best_step(store.client, store.good) == 2
    run = store.client.get_run(store.good)
    rows = {name: (best, last) for name, best, last in dice_rows(store.client, run)}
    assert list(rows) == ["liver", "spleen", "mean"]  # the configured label order, mean last
    assert rows["liver"] == pytest.approx((0.9, 0.8))
    assert rows["mean"] == pytest.approx((0.8, 0.7))


def test_describe_run_sets_the_note(store: Store) -> None:
    text = describe_run(store.good, store.client)
    run = store.client.get_run(store.good)
    assert run.data.tags[NOTE_TAG] == text
    assert "## Training run `fold0-lr3e-3` · experiment `demo_seg`" in text
    assert f"| catalog sha256 | `{CATALOG_SHA}` |" in text
    assert "| catalog rows / ok series / usable items | 12 / 10 / 8 |" in text
    assert "| train / validation items | 6 / 2 |" in text
    assert "| label | best epoch (2) | last validation (3) |" in text
    assert "| liver | 0.900 | 0.800 |" in text and "| **mean** | 0.800 | 0.700 |" in text
    assert "| model | name=unet, channels=[4, 8, 16] |" in text
    assert "| split | folds=3, fold=0 |" in text
    base = f"#/experiments/{store.experiment_id}/runs/{store.good}"
    assert f"[caseA.png]({base}/artifactPath/review/caseA.png?workflowType=machine_learning)" in text
    assert "[demo_seg v1](#/models/demo_seg/versions/1) · aliases: @candidate" in text
    assert "git `abc123`" in text
    # Re-running rewrites (not appends) and the finished run stays finished.
    assert describe_run(store.good, store.client) == text
    assert store.client.get_run(store.good).info.status == "FINISHED"
    with pytest.raises(MlflowException):
        describe_run("0" * 32, store.client)


def test_describe_model_version_gives_lineage(store: Store) -> None:
    text = describe_model_version("demo_seg", 1, store.client)
    mv = store.client.get_model_version("demo_seg", "1")
    assert mv.description == text
    # The first line is plain text (the versions list shows it unrendered), then the markdown.
    assert text.startswith(f"demo_seg v1 · trained on catalog-{CATALOG_SHA[:12]}\n\n## demo_seg v1")
    assert "`models:/demo_seg/1`" in text
    assert (f"[`fold0-lr3e-3`](#/experiments/{store.experiment_id}/runs/{store.good}"
            f"?workflowType=machine_learning) (`{store.good}`)") in text
    assert f"catalog sha256 `{CATALOG_SHA}`" in text and "4 subjects, 6 train / 2 val items" in text
    assert "| liver | 0.900 | 0.800 |" in text
    assert "Task: segmentation" in text
    other = describe_model_version("demo_seg", "2", store.client)
    assert f"(`{store.poor}`)" in other and "| liver | 0.400 | 0.400 |" in other
    with pytest.raises(MlflowException):
        describe_model_version("demo_seg", 9, store.client)


def test_a_long_description_is_clipped_to_the_tag_limit(store: Store, tmp_path: Path) -> None:
    # Hundreds of review images: the list is capped and the note fits the 5000 characters of a PostgreSQL description column.
    for i in range(60):
        png = tmp_path / f"series_{i:03d}_{'x' * 40}.png"
        png.write_bytes(b"\x89PNG")
        store.client.log_artifact(store.good, str(png), "review")
    text = describe_run(store.good, store.client)
    assert len(text) <= 5000
    assert "more under `review/`" in text


def test_an_inference_run_gets_lineage_to_model_and_training(store: Store) -> None:
    # Params, tags and metrics as imaging.pipelines.infer.run.log_inference_run writes them.
    exp = store.client.create_experiment("inference")
    rid = store.client.create_run(exp, run_name="infer-shard0-of-2").info.run_id
    for key, value in {"model_uri": "models:/demo_seg@candidate", "model_name": "demo_seg", "model_version": "1",
                       "model_run_id": store.good, "shard": "0/2", "seg.identity": "deidentified",
                       "seg.type": "BINARY", "device": "auto", "inference.overlap": "0.25",
                       "inference.tta_flip": "False"}.items():
        store.client.log_param(rid, key, value)
    store.client.set_tag(rid, "imaging.stage", "infer")
    for key, value in {"n_series": 5, "n_ok": 4, "n_error": 1, "n_skipped_done": 0, "wall_s": 12.5,
                       "series_per_s": 0.4}.items():
        store.client.log_metric(rid, key, value)
    text = describe_run(rid, store.client)
    assert text.startswith("## Inference run `infer-shard0-of-2` · experiment `inference`")
    assert "[demo_seg v1](#/models/demo_seg/versions/1) as `models:/demo_seg@candidate`" in text
    assert (f"trained by run [`fold0-lr3e-3`](#/experiments/{store.experiment_id}/runs/{store.good}"
            "?workflowType=machine_learning)") in text
    assert "| series in shard / ok / error / already done | 5 / 4 / 1 / 0 |" in text
    assert "| wall time | 12.500 s (0.400 series/s) |" in text
    assert "Training run" not in text and "Dice" not in text
