"""A federation as Slurm jobs on the real test cluster (slurmctld + slurmd + munged):
``python -m imaging.launch.federate`` renders and submits one SuperLink job and one
SuperNode job per site (2 synthetic hospitals); the SuperNode jobs find the SuperLink
through ``<run_dir>/superlink.address``, the run completes its round with both sites,
and every job ends by itself when the federation is over.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.federated, pytest.mark.slow]
SITES = ("A", "B")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two hospitals: synthetic export (scanners site0/site1) -> `imaging ingest`."""
    from imaging import synth
    from imaging.keys import Pseudonymizer
    from imaging.pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("fed-slurm-sites")
    out: dict[str, Path] = {}
    for i, site in enumerate(SITES):
        export = root / site / "export"
        synth.generate(export, subjects=3, seed=500 + i, cases="none", scanner=f"site{i}", dicomdir=False)
        out[site] = root / site / "dataset"
        ingest(export, out[site], Pseudonymizer.from_config(demo_key=True), private_dir=root / site / "private",
               workers=1, progress=False)
    return out


def test_superlink_and_supernode_jobs_federate_two_sites(slurm_cluster: SlurmCluster, datasets: dict[str, Path],
                                                         tmp_path: Path) -> None:
    overrides = [
        "experiment=demo_federated", f"paths.root_dir={tmp_path}", "federation.synthetic=null",
        "federation.sites=[A,B]", *(f"+federation.datasets.{s}={d}" for s, d in datasets.items()),
        "federation.rounds=1", "federation.local_epochs=1", "federation.min_sites=2",
        "federation.round_timeout_s=300", "federation.connect_timeout_s=300",
        "federation.slurm.address_timeout_s=300", "federation.slurm.max_wait_time_s=60",
        "data.patch_size=[16,16,8]", "data.split.folds=3", "data.samples_per_volume=1",
        "model.channels=[4,8,16]", "model.strides=[2,2]", "trainer.progress=false",
        "tracking.run_name=fed-slurm", "tracking.review_cases=0",
        "launcher=slurm", "launcher.cpus_per_task=1", "launcher.time=00:30:00",
        "+launcher.env.OMP_NUM_THREADS=1",
        # The jobs find Flower's and our commands in this interpreter's environment.
        f"launcher.env_setup=['export PATH={Path(sys.executable).parent}:$PATH']",
    ]
    proc = subprocess.run([sys.executable, "-m", "imaging.launch.federate", *overrides], cwd=tmp_path,
                          env=slurm_cluster.env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    assert [r[0] for r in rows] == ["superlink", "supernode:A", "supernode:B"], proc.stdout
    job_ids = [r[1] for r in rows]
    assert all(j.isdigit() for j in job_ids), rows
    run_dir = Path(rows[0][2]).parent.parent
    logs = sorted((run_dir / "slurm").glob("slurm-*.out"))
    states = slurm_cluster.wait_finished(job_ids, logs, "federation")
    logs = sorted((run_dir / "slurm").glob("slurm-*.out"))
    text = {p.name: p.read_text(errors="replace") for p in logs}
    for job_id, tasks in states.items():
        assert [t.state for t in tasks] == ["COMPLETED"], (job_id, tasks, text)
    summary = json.loads((run_dir / "federation.json").read_text())
    assert [h["round"] for h in summary["history"]] == [1]
    assert summary["history"][0]["sites_trained"] == ["A", "B"] and summary["history"][0]["sites_failed"] == []
    assert 0.0 <= summary["history"][0]["evaluate"]["dice_mean"] <= 1.0
    # The SuperLink job published its address, and removed it at the end (the sites then stopped).
    link_log = next(v for k, v in text.items() if k.startswith("slurm-superlink-"))
    assert "SuperLink listening; SuperNodes dial " in link_log
    assert not (run_dir / "superlink.address").exists()
    for site in SITES:
        site_log = next(v for k, v in text.items() if k.startswith(f"slurm-site-{site}-"))
        assert "dialling the SuperLink at " in site_log and "the federation is over" in site_log
    # The coordinator's config names no site's folder.
    assert not any(str(d) in (run_dir / "federate.yaml").read_text() for d in datasets.values())
