"""A real local federation: a SuperLink and three SuperNodes (Flower's own processes)
on 127.0.0.1, each site with its own synthetic export (its own scanner set-up, PHI
canaries) ingested like a hospital would. Site C is killed in round 2: the round
completes with A and B and the run says so. The coordinator side never opens a site's
folder (an audit hook in its Python processes logs every open), receives only weights
and metrics, leaves no PHI in its outputs or MLflow, and resumes in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from imaging.audit import build_needles, scan_mlflow, scan_paths
from imaging.federated.coordinator import CHECKPOINT, SUMMARY
from imaging.federated.processes import LocalFederation
from imaging.pipelines.federate import write_server_config
from imaging.synth.canaries import CANARY_TOKEN
from tests.fixtures.train_data import CONF_DIR

pytestmark = [pytest.mark.integration, pytest.mark.federated, pytest.mark.slow]

SITES = ("A", "B", "C")
# Installed in the coordinator's Python processes only (SuperLink, SuperExec, ServerApp):
# every file or folder they open or list is appended to $IMAGING_TEST_OPEN_LOG.
SITECUSTOMIZE = '''
import os, sys
_log = os.environ.get("IMAGING_TEST_OPEN_LOG")
if _log:
    _out = open(_log, "a", encoding="utf-8", buffering=1)  # opened before the hook: no recursion

    def _hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            _out.write(f"{os.getpid()} {event} {os.fsdecode(args[0])}\\n")
    sys.addaudithook(_hook)
'''


@dataclass
class Sites:
    root: Path
    datasets: dict[str, Path]
    needles: object


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    """Three hospitals: synthetic export (scanner site0/1/2) -> `imaging ingest`."""
    from imaging import synth
    from imaging.keys import Pseudonymizer
    from imaging.pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("federation")
    datasets, manifests, links = {}, [], []
    for i, site in enumerate(SITES):
        export = root / "hospitals" / site / "export"
        synth.generate(export, subjects=3, seed=300 + i, cases="none", scanner=f"site{i}", dicomdir=False)
        out = root / "hospitals" / site / "dataset"
        ingest(export, out, Pseudonymizer.from_config(demo_key=True), private_dir=root / "hospitals" / site / "private",
               workers=1, progress=False)
        datasets[site] = out
        manifests.append(export / "manifest.json")
        links.extend(root.glob(f"hospitals/{site}/private/**/links.csv"))
    return Sites(root, datasets, build_needles([CANARY_TOKEN], links, manifests))


def _config(root: Path, rounds: int, names: tuple[str, ...]) -> object:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("federate", overrides=[f"federation.sites=[{','.join(names)}]",
            "experiment=demo_federated", f"paths.root_dir={root}", "federation.synthetic=null",
            f"federation.rounds={rounds}", "federation.local_epochs=1", "federation.min_sites=2",
            "federation.round_timeout_s=240", "federation.connect_timeout_s=120",
            "data.patch_size=[16,16,8]", "data.split.folds=3", "data.samples_per_volume=1",
            "model.channels=[4,8,16]", "model.strides=[2,2]", "trainer.progress=false",
            "tracking.run_name=fed-test", "tracking.review_cases=0"])


@dataclass
class Ran:
    root: Path
    run_dir: Path
    summary: dict
    opened: list[str]
    tracking_uri: str


def _federate(sites: Sites, root: Path, rounds: int, names: tuple[str, ...],
              kill: str | None = None) -> Ran:
    cfg = _config(root, rounds, names)
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_server_config(cfg, run_dir)
    hook_dir = root / "audit-hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    open_log = root / f"opened-{rounds}.log"
    fed = LocalFederation(run_dir / "flower", coordinator_env={
        "IMAGING_TEST_OPEN_LOG": str(open_log),
        "PYTHONPATH": os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")])})
    fed.work_dir.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def kill_in_round_2() -> None:
        # Round 1's checkpoint is written as round 2 starts: then the hospital goes away.
        while not done.is_set():
            if (run_dir / CHECKPOINT).is_file():
                fed.kill_site(str(kill))
                return
            time.sleep(0.5)

    try:
        fed.start_superlink()
        fed.start_supernodes({s: (sites.datasets[s], root / "site-work" / s) for s in names})
        killer = threading.Thread(target=kill_in_round_2, daemon=True) if kill else None
        if killer:
            killer.start()
        code = fed.run(config_path, timeout_s=900)
        done.set()
    finally:
        done.set()
        fed.stop()
    assert code == 0, (run_dir / "flower" / "flwr-run.log").read_text()[-4000:]
    summary = json.loads((run_dir / SUMMARY).read_text())
    opened = open_log.read_text().splitlines() if open_log.is_file() else []
    return Ran(root, run_dir, summary, opened, f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")


@pytest.fixture(scope="module")
def ran(sites: Sites) -> Iterator[Ran]:
    yield _federate(sites, sites.root / "coordinator", rounds=2, names=SITES, kill="C")


def test_every_site_trains_in_round_1_and_the_round_after_a_site_dies_completes(ran: Ran) -> None:
    h = ran.summary["history"]
    assert [r["round"] for r in h] == [1, 2]
    assert h[0]["sites_trained"] == ["A", "B", "C"] and h[0]["sites_failed"] == []
    assert h[1]["sites_trained"] == ["A", "B"] and h[1]["sites_failed"] == ["C"]
    for r in h:
        assert 0.0 <= r["evaluate"]["dice_mean"] <= 1.0
        assert {"A", "B"} <= set(r["per_site"])


def test_one_mlflow_run_with_global_and_per_site_metrics_and_the_model_registered(ran: Ran) -> None:
    client = MlflowClient(ran.tracking_uri, registry_uri=ran.tracking_uri)
    run = client.get_run(ran.summary["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice_mean")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "sites_trained")] == [3.0, 2.0]
    assert len(client.get_metric_history(run.info.run_id, "site.A.val_dice_mean")) == 2
    assert run.data.tags["federation.round2.lost"] == "C"
    assert {f"site.{s}.catalog_sha256" for s in SITES} <= set(run.data.tags)
    version = client.get_model_version_by_alias("demo_federated", "candidate")
    assert version.run_id == run.info.run_id
    assert version.tags["federated"] == "true"


def test_the_coordinator_receives_weights_and_metrics_only(ran: Ran) -> None:
    for r in ran.summary["history"]:
        assert r["received"], "each round records what crossed the wire"
        for item in r["received"]:
            types = {rec["type"] for rec in item["records"].values()}
            assert types <= {"ArrayRecord", "MetricRecord"}, item
            for rec in item["records"].values():
                if rec["type"] == "MetricRecord":
                    assert all(k == "num-examples" or k.startswith(("train_", "dice_", "steps", "n_cases", "missed_", "hd95_"))
                               for k in rec["keys"]), rec["keys"]


def test_the_coordinator_processes_never_open_a_site_folder(ran: Ran, sites: Sites) -> None:
    assert any(SUMMARY in line or "federate.yaml" in line for line in ran.opened), \
        "the audit hook must have run in the ServerApp (it reads its config)"
    site_dirs = [str(p.parent) for p in sites.datasets.values()]
    leaks = [line for line in ran.opened if any(d in line for d in site_dirs)]
    assert leaks == []


def test_no_phi_in_the_coordinator_outputs_or_its_mlflow_run(ran: Ran, sites: Sites) -> None:
    assert scan_paths(list(sites.root.glob("hospitals/*/export/manifest.json")), sites.needles), \
        "the needles must find the PHI at its source"
    assert scan_paths([ran.run_dir], sites.needles) == []
    assert scan_mlflow(ran.tracking_uri, sites.needles) == []


def test_a_stopped_coordinator_resumes_in_the_same_run(ran: Ran, sites: Sites) -> None:
    again = _federate(sites, ran.root, rounds=3, names=("A", "B"))
    h = again.summary["history"]
    assert [r["round"] for r in h] == [1, 2, 3]
    assert h[:2] == ran.summary["history"], "rounds already done are kept, not re-run"
    assert again.summary["run_id"] == ran.summary["run_id"]
    client = MlflowClient(again.tracking_uri)
    assert [m.step for m in client.get_metric_history(again.summary["run_id"], "val_dice_mean")] == [1, 2, 3]
    (ran.root / "dl").mkdir(exist_ok=True)
    lines = client.download_artifacts(again.summary["run_id"], "federation/rounds.jsonl", str(ran.root / "dl"))
    assert [json.loads(x)["round"] for x in Path(lines).read_text().splitlines()] == [1, 2, 3], \
        "the resumed coordinator kept the rounds already logged"


def test_a_server_app_that_fails_is_a_failed_run(sites: Sites, tmp_path: Path) -> None:
    """`flwr run --stream` exits 0 when the ServerApp raises: the SuperLink's run status decides."""
    empty = tmp_path / "not-a-dataset"
    empty.mkdir()
    cfg = _config(tmp_path, 1, ("A",))
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    fed = LocalFederation(run_dir / "flower")
    fed.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        fed.start_superlink()
        fed.start_supernodes({"A": (empty, tmp_path / "site-work")})  # a site whose data cannot load
        code = fed.run(write_server_config(cfg, run_dir), timeout_s=300)
    finally:
        fed.stop()
    log = (run_dir / "flower" / "flwr-run.log").read_text()
    assert "ServerApp raised an exception" in log
    assert code == 1 and not (run_dir / SUMMARY).exists()
