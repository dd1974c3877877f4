"""`imaging audit --mlflow URI --export EXPORT` on a real SQLite MLflow store: a patient's
name and birth date (read from the export's headers) are found in a run description,
a param, a model version description, an alias and artifacts in their decoded forms,
and each hit names the MLflow entity, never the value."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import mlflow
import pydicom
import pytest
from mlflow.tracking import MlflowClient
from pydicom.data import get_testdata_file

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_mlflow

pytestmark = pytest.mark.integration


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientName, ds.PatientBirthDate = "Müller^Jürgen", "19570312"
    ds.SpecificCharacterSet = "ISO_IR 192"
    (tmp_path / "export" / "P1").mkdir(parents=True)
    ds.save_as(tmp_path / "export" / "P1" / "IM0001", enforce_file_format=True)
    return tmp_path / "export"


def _store(tmp_path: Path, leak: bool) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("seg", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name="infer") as run:
        mlflow.log_param("series", "1a2b3c4d5e6f7a8b")
        mlflow.log_metric("dice", 0.8)
        mlflow.log_dict({"failures": [{"series": "9f8e7d6c", "reason": "ValueError"}]}, "report.json")
        if leak:  # the case: an exception text with the folder name in the description
            mlflow.set_tag("mlflow.note.content", "failures: 'Müller, Jürgen (12.03.1957)/IM1'")
            mlflow.log_param("reviewer", "J. Mueller 1957-03-12")
            tmp = tmp_path / "cases.json.gz"
            tmp.write_bytes(gzip.compress(json.dumps({"who": "Jürgen Müller"}).encode()))
            mlflow.log_artifact(str(tmp), "eval")
    client.create_registered_model("seg-model")
    version = client.create_model_version("seg-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("seg-model", "champion", version.version)
    if leak:
        client.update_model_version("seg-model", version.version, description="checked on MULLER^JURGEN")
        client.set_registered_model_alias("seg-model", "muller-19570312", version.version)
    return uri


def test_identities_found_in_every_mlflow_entity(export: Path, tmp_path: Path) -> None:
    uri = _store(tmp_path, leak=True)
    hits = scan_mlflow(uri, build_needles([], exports=[export]))
    found = {(h.where.split(" artifact ")[0].split(" ")[0], h.field) for h in hits}
    assert ("mlflow:run", "tag mlflow.note.content") in found
    reviewer = {h.rule for h in hits if h.field == "param reviewer"}
    assert reviewer == {"export PatientName", "export PatientBirthDate"}  # Mueller, ISO date
    assert ("mlflow:registered-model", "description") in found  # the version's description
    assert ("mlflow:registered-model", "alias") in found
    assert any(h.where.endswith("artifact eval/cases.json.gz") and h.field == "$.who" for h in hits)
    assert not any(s in h.masked.lower() for h in hits for s in ("jü", "mü", "19"))
    assert audit_main(["--mlflow", uri, "--export", str(export)]) == 1


def test_clean_store_stays_clean(export: Path, tmp_path: Path) -> None:
    uri = _store(tmp_path, leak=False)
    assert scan_mlflow(uri, build_needles([], exports=[export])) == []
    assert audit_main(["--mlflow", uri, "--export", str(export)]) == 0
