"""``imaging federate``: a federation with Flower, from one command.

Local (``federation.superlink=null``): for each site, its dataset (or, for the demo, a
synthetic export written and ingested with the same CLI commands a site would run);
then a SuperLink and one SuperNode per site as real processes on 127.0.0.1, and
``flwr run`` of our Flower App. Each SuperNode is given only its own site's folders.

Cross-hospital (``federation.superlink=host:port``): the sites run their SuperNodes
themselves (docs/federated.md); this command only submits the run to the SuperLink.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imaging.errors import UsageError
from imaging.federated.baselines import check_kinds, ratios, run_baselines
from imaging.federated.config import write_server_config
from imaging.federated.coordinator import CHECKPOINT, SUMMARY, recipe_yaml
from imaging.federated.processes import LocalFederation
from imaging.fsutil import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class FederateResult:
    summary: dict[str, Any]
    run_dir: Path


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "imaging", *args]
    log.info("$ imaging %s", " ".join(args))
    code = subprocess.call(cmd)
    if code not in (0, 1):  # 1: some series failed (recorded in the catalog); the rest is usable
        raise RuntimeError(f"'imaging {' '.join(args)}' failed with exit code {code}")


def synthetic_sites(cfg: DictConfig, sites: list[str]) -> dict[str, Path]:
    """Demo: write and ingest one synthetic export per site (different seeds: different
    patients; each site its own scanner set-up, see ``imaging.synth`` ``scanner=``)."""
    syn = cfg.federation.synthetic
    root = Path(str(cfg.paths.demo_dir)) / "federated"
    out: dict[str, Path] = {}
    for i, site in enumerate(sites):
        export, dataset = root / site / "export", root / site / "dataset"
        _cli("synth", f"output_dir={export}", f"subjects={int(syn.subjects)}", f"seed={int(syn.seed) + i}",
             "cases=none", f"scanner=site{i % 3}")
        _cli("ingest", f"input_dir={export}", f"output_dir={dataset}", "demo_key=true", "fail_on_error=false")
        out[site] = dataset
    return out


def site_datasets(cfg: DictConfig) -> dict[str, Path]:
    """Each site's dataset folder (local federation).

    Raises:
        UsageError: no sites, or a site without a dataset folder.
    """
    sites = [str(s) for s in cfg.federation.sites]
    if len(sites) < 1 or len(set(sites)) != len(sites):
        raise UsageError(f"federation.sites={sites}: name one or more distinct sites, e.g. federation.sites=[A,B,C]")
    if cfg.federation.get("synthetic"):
        return synthetic_sites(cfg, sites)
    given = {str(k): Path(str(v)) for k, v in (cfg.federation.datasets or {}).items()}
    missing = [s for s in sites if s not in given]
    if missing:
        raise UsageError(f"federation.datasets has no folder for site(s) {missing}: "
                         f"federation.datasets.{missing[0]}=/path/to/dataset")
    for site in sites:
        if not (given[site] / "catalog.csv").is_file():
            raise UsageError(f"federation.datasets.{site}='{given[site]}': not an `imaging ingest` dataset "
                             "(no catalog.csv)")
    return {s: given[s] for s in sites}


def run(cfg: DictConfig) -> FederateResult:
    """Run the federation as configured; see the module docstring.

    Raises:
        UsageError: bad federation settings (before anything starts).
        RuntimeError: the Flower run failed (its log is named).
    """
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    timeout = float(fed.round_timeout_s) * 2 * int(fed.rounds) + float(fed.connect_timeout_s) + 300
    if fed.get("superlink"):
        raise UsageError("federation.superlink: submitting to a remote SuperLink is done with "
                         "`flwr run` (docs/federated.md); `imaging federate` runs local federations")
    kinds = check_kinds([str(k) for k in fed.get("baselines") or []])
    datasets = site_datasets(cfg)
    config_path = write_server_config(cfg, run_dir)
    local = LocalFederation(run_dir / "flower")
    code = local.run_sites({site: (dataset, run_dir / "sites" / site) for site, dataset in datasets.items()},
                           config_path, timeout)
    summary_path = run_dir / SUMMARY
    if code != 0 or not summary_path.is_file():
        raise RuntimeError(f"the Flower run ended with code {code} and no {SUMMARY}; "
                           f"see {local.work_dir / 'flwr-run.log'}")
    summary = json.loads(summary_path.read_text())
    if kinds:
        summary["baselines"] = compare(cfg, datasets, run_dir, kinds, summary)
    return FederateResult(summary, run_dir)


def compare(cfg: DictConfig, datasets: dict[str, Path], run_dir: Path, kinds: list[str],
            summary: dict[str, Any]) -> dict[str, Any]:
    """The federated model against same-budget baselines (:mod:`imaging.federated.baselines`),
    written to ``<run_dir>/baselines.json`` and logged in the federation's MLflow run."""
    import torch

    from imaging.tracking.federation import log_baselines

    fed = cfg.federation
    epochs = int(fed.rounds) * int(fed.local_epochs)
    payload = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    federated = {"federated_last": payload["state"]}
    if payload.get("best_state") is not None and int(summary["best_round"]) != int(payload["round"]):
        federated["federated_best"] = payload["best_state"]
    steps = sum(int(site.get("train_steps", 0)) for h in summary["history"] for site in h["per_site"].values())
    scored = run_baselines(recipe_yaml(cfg), datasets, run_dir / "baselines", epochs=epochs,
                           lr=float(cfg.trainer.lr), kinds=kinds, federated=federated, federated_steps=steps)
    names = [s.name for s in scored]
    pairs = [(f, b) for f in federated for b in names if not b.startswith("federated")]
    comparison = {"budget": {"rounds": int(fed.rounds), "local_epochs": int(fed.local_epochs), "epochs": epochs},
                  "models": [{"name": s.name, "metrics": s.metrics, "per_site": s.per_site, "steps": s.steps}
                             for s in scored],
                  "ratios": {f"{a}_vs_{b}": ratios(scored, a, b) for a, b in pairs}}
    atomic_write_json(run_dir / "baselines.json", comparison)
    if summary.get("run_id"):
        log_baselines(cfg, str(summary["run_id"]), comparison)
    return comparison
