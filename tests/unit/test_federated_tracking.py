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
