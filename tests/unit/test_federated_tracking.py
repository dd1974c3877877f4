"""The federation's MLflow run keeps every round's line of ``federation/rounds.jsonl``
across a stopped and resumed coordinator (read back from the run itself, a real sqlite
MLflow store), and carries the differential-privacy figures of each round."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from imaging.federated.coordinator import RoundRecord
from imaging.tracking.federation import ROUNDS_ARTIFACT, FederationTracker
from tests.fixtures.train_data import CONF_DIR

SITES = {"A": {"catalog_sha256": "0" * 64, "n_cases": 4, "n_subjects": 4}}


def _record(rnd: int, dice: float, privacy: dict[str, float] | None = None) -> RoundRecord:
    return RoundRecord(rnd, ["A"], [], {"train_loss": 1.0 / rnd}, {"dice_mean": dice}, {}, 1.0,
                       privacy=privacy or {})


def _rounds(uri: str, run_id: str) -> list[dict]:
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/{ROUNDS_ARTIFACT}")
    return [json.loads(line) for line in text.splitlines()]


def test_rounds_jsonl_survives_a_resumed_coordinator(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("federate", overrides=["experiment=demo_federated", f"paths.root_dir={tmp_path}",
                                             "federation.synthetic=null"])
    first = FederationTracker(cfg)
    run_id = first.start(None, cfg, SITES)
    first.log_round(_record(1, 0.5), "dice_mean", 0.5)
    first.log_round(_record(2, 0.6), "dice_mean", 0.6)
    first.mlflow.end("KILLED")  # the coordinator stops after round 2

    again = FederationTracker(cfg)
    assert again.start(run_id, cfg, SITES) == run_id
    privacy = {"dp_epsilon": 3.5, "dp_delta": 1e-5, "dp_noise_std": 0.25, "dp_sites_sampled": 3.0,
               "dp_sites_aggregated": 2.0}
    again.log_round(_record(2, 0.6), "dice_mean", 0.6)  # a round logged again replaces its line
    again.log_round(_record(3, 0.7, privacy), "dice_mean", 0.7)
    again.mlflow.end("FINISHED")

    uri = str(mlflow.get_tracking_uri())
    rounds = _rounds(uri, run_id)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["evaluate"]["dice_mean"] for r in rounds] == [0.5, 0.6, 0.7]
    assert rounds[2]["privacy"] == privacy
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "dp_epsilon")] == [(3, 3.5)]
    assert [m.value for m in client.get_metric_history(run_id, "dp_sites_aggregated")] == [2.0]


def test_baselines_that_fail_to_log_leave_the_finished_federation_finished(tmp_path: Path) -> None:
    """The comparison is logged into the federation's run after it ended FINISHED; a failure there
    (here a metric that is not a number) is said in a tag, and the run is not turned FAILED."""
    import pytest

    from imaging.tracking.federation import BASELINES_ARTIFACT, log_baselines

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("federate", overrides=["experiment=demo_federated", f"paths.root_dir={tmp_path}",
                                             "federation.synthetic=null"])
    tracker = FederationTracker(cfg)
    run_id = tracker.start(None, cfg, SITES)
    tracker.mlflow.end("FINISHED")
    good = {"models": [{"name": "pooled", "metrics": {"dice_mean": 0.9, "num-examples": 6.0}, "steps": 288}],
            "ratios": {"federated_last_vs_pooled": {"dice_mean": 0.97}}}
    log_baselines(cfg, run_id, good)
    client = MlflowClient(str(mlflow.get_tracking_uri()))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["federation.baselines"] == "pooled"
    assert run.data.metrics["baseline.pooled.val_dice_mean"] == 0.9 and "baseline.pooled.val_num-examples" not in run.data.metrics
    assert run.data.metrics["ratio.federated_last_vs_pooled.dice_mean"] == 0.97
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{BASELINES_ARTIFACT}")) == good

    bad = {"models": [{"name": "pooled", "metrics": {"dice_mean": "n/a"}}], "ratios": {}}
    with pytest.raises(ValueError):
        log_baselines(cfg, run_id, bad)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["federation.baselines"] == "failed: ValueError"
