"""`scan_mlflow` on a real SQLite-backed MLflow store: planted canaries found, clean runs not."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_mlflow

pytestmark = pytest.mark.integration
CANARY = "ZZPHI"
TOKEN = f"{CANARY}^Patient^One"


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(
        "audit-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name="clean-run"):
        mlflow.log_param("lr", 0.01)
        mlflow.set_tag("dataset", "subject_key=1a2b3c")
        mlflow.log_metric("val_dice", 0.8)
        mlflow.log_dict({"series_key": "1a2b", "spacing": [1, 1, 2]}, "eval/summary.json")
        mlflow.log_text("epoch 1 dice 0.8\n", "logs/train.log")
    return uri, exp


def _fields(hits: list) -> set[str]:
    return {h.field for h in hits}


def test_clean_store_has_no_hits(store: tuple[str, str]) -> None:
    uri, _ = store
    assert scan_mlflow(uri, build_needles([CANARY])) == []
    assert audit_main(["--mlflow", uri, "--canary", CANARY]) == 0


def test_planted_canaries_are_found(store: tuple[str, str], tmp_path: Path) -> None:
    uri, exp = store
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name=f"{CANARY}-run"):
        mlflow.log_param("input_dir", f"/pacs/{TOKEN}")
        mlflow.set_tag("note", TOKEN)
        mlflow.log_metric(f"dice_{CANARY}", 0.5)
        mlflow.log_dict({"cases": [{"name": TOKEN}]}, "eval/cases.json")
        mlflow.log_text(f"loading {TOKEN}\n", "logs/infer.log")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("seg-model", description=f"trained on {TOKEN}")
    hits = scan_mlflow(uri, [CANARY])
    fields = _fields(hits)
    assert "run name" in fields
    assert "param input_dir" in fields
    assert "tag note" in fields
    assert "metric name" in fields
    assert "description" in fields
    wheres = {h.where for h in hits}
    assert any(w.endswith("artifact eval/cases.json") for w in wheres)
    assert any(w.endswith("artifact logs/infer.log") for w in wheres)
    assert all(TOKEN not in h.masked for h in hits)
    report = tmp_path / "out.json"
    report.write_text(json.dumps({"ok": True}))
    assert audit_main([str(report), "--mlflow", uri, "--canary", CANARY]) == 1
