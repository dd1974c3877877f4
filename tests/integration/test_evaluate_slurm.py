"""`imaging evaluate ... launcher=slurm` on the real test cluster (slurmctld + slurmd + munged):
one SuperLink job and one SuperNode job per site (2 synthetic hospitals), rendered from the
federation's templates and submitted by the command itself; every site answers, the
SuperLink job logs the result into MLflow (one run, the version's tags) and every job ends
by itself. Each site's case count is checked against its catalog (labelled CT rows, read
with the csv module); the figures themselves are checked against `imaging infer` + numpy
by the local tests (test_evaluate_federated.py, test_evaluate_central.py).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.fixtures.slurm_cluster import SlurmCluster
from tests.integration.test_federated_slurm import SITES, datasets  # noqa: F401 - the module fixture
from tests.unit.test_evaluate_slurm import _register

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.federated, pytest.mark.slow]


def labelled_ct(dataset: Path) -> int:
    with (dataset / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        return sum(1 for r in csv.DictReader(fh) if r["status"] == "ok" and r["modality"] == "CT" and r["label_path"])


def test_evaluate_submits_the_federation_roles_and_the_superlink_job_logs_the_result(
        slurm_cluster: SlurmCluster, datasets: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / ".imaging").write_text("")
    uri = _register(tmp_path)
    overrides = [
        "model=models:/central@champion", "experiment=demo_federated", f"paths.root_dir={tmp_path}",
        "federation.synthetic=null", "federation.sites=[A,B]",
        *(f"+federation.datasets.{s}={d}" for s, d in datasets.items()),
        "federation.round_timeout_s=300", "federation.connect_timeout_s=300",
        "federation.slurm.address_timeout_s=300", "federation.slurm.max_wait_time_s=60",
        "inference.device=cpu", "launcher=slurm", "launcher.cpus_per_task=1", "launcher.time=00:30:00",
        "+launcher.env.OMP_NUM_THREADS=1",
        f"launcher.env_setup=['export PATH={Path(sys.executable).parent}:$PATH']",
    ]
    proc = subprocess.run([sys.executable, "-m", "imaging", "evaluate", *overrides], cwd=tmp_path,
                          env=slurm_cluster.env | {"OMP_NUM_THREADS": "1", "IMAGING_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    assert [r[0] for r in rows] == ["superlink", "supernode:A", "supernode:B"], proc.stdout
    job_ids = [r[1].strip() for r in rows]
    assert all(j.isdigit() for j in job_ids), rows
    run_dir = tmp_path / "runs" / "evaluation" / "central-v1-all"
    states = slurm_cluster.wait_finished(job_ids, run_dir / "slurm", "evaluation")
    text = {p.name: p.read_text(errors="replace") for p in (run_dir / "slurm").glob("slurm-*.out")}
    for job_id, tasks in states.items():
        assert [t.state for t in tasks] == ["COMPLETED"], (job_id, tasks, text)
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["answered"] == list(SITES) and result["gaps"] == []
    for site, dataset in datasets.items():
        assert result["per_site"][site]["n_cases"] == labelled_ct(dataset) > 0
    link_log = next(v for k, v in text.items() if k.startswith("slurm-superlink-"))
    assert "evaluation logged with exit code 0" in link_log
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("evaluation")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.metrics["site.A.n_cases"] == result["per_site"]["A"]["n_cases"]
    version = client.get_model_version("central", "1")
    assert version.tags["eval.pooled.sites"] == "A,B" and version.tags["eval.run_id"] == run.info.run_id
    assert not (run_dir / "superlink.address").exists()
    assert not any(str(d) in (run_dir / "federate.yaml").read_text() for d in datasets.values())
