"""MLflow for a federation: one run on the coordinator's side.

Params are the resolved config; per site only its catalog hash and counts (never its
data); per round the aggregated (``val_*``, ``train_*``) and per-site
(``site.<name>.val_dice_mean``...) metrics, the number of sites that returned an update,
with differential privacy the round's ``dp_*`` figures (``dp_epsilon`` at ``dp_delta``),
and a ``federation/rounds.jsonl`` artifact that names the sites lost in a round (kept
across a resumed coordinator: read back from the run, one line per round). The final
model is registered exactly like a centrally trained one.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from imaging.tracking.registry import register_model
from imaging.tracking.runs import MlflowTracker, flatten, git_commit

log = logging.getLogger(__name__)

ROUNDS_ARTIFACT = "federation/rounds.jsonl"


class FederationTracker:
    """What :func:`imaging.federated.coordinator.run_federation` logs, on the coordinator."""

    def __init__(self, cfg: DictConfig, series_rule: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.mlflow = MlflowTracker.from_config(cfg, series_rule=series_rule)
        self.rounds: dict[int, dict[str, Any]] = {}  # round -> its record, as logged

    def start(self, run_id: str | None, cfg: DictConfig, sites: dict[str, dict[str, Any]]) -> str:
        rid = self.mlflow.start(run_id, str(cfg.tracking.run_name))
        if rid == run_id:
            self.rounds = _logged_rounds(rid)  # a resumed coordinator appends to what the run holds
        else:  # a new run (also when the checkpoint's run could not be reopened)
            config = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(config, dict)
            params = flatten({k: v for k, v in config.items() if k not in ("hydra", "paths")})
            items = sorted(params.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i:i + 100]))
            mlflow.log_dict({str(k): v for k, v in config.items()}, "config/federate.json")
            mlflow.set_tags({"imaging.kind": "federated", "git_commit": git_commit(), "torch": torch.__version__,
                             "federation.sites": ",".join(sorted(sites)),
                             **{f"site.{name}.catalog_sha256": s["catalog_sha256"] for name, s in sites.items()}})
            mlflow.log_params({f"site.{name}.{k}": str(v) for name, s in sites.items()
                               for k, v in s.items() if k != "catalog_sha256"})
        return rid

    def log_round(self, rec: Any, monitor: str, best: float) -> None:
        metrics: dict[str, float] = {"sites_trained": float(len(rec.sites_trained)),
                                     "sites_failed": float(len(rec.sites_failed)), "round_seconds": rec.seconds}
        metrics.update({f"val_{k}": v for k, v in rec.evaluate.items() if k != "num-examples"})
        metrics.update({k if k.startswith("train_") else f"train_{k}": v for k, v in rec.train.items()
                        if k not in ("num-examples", "steps")})
        for site, values in rec.per_site.items():
            metrics.update({f"site.{site}.{k}": v for k, v in values.items()
                            if not k.endswith(("num-examples", "steps"))})
        metrics.update(getattr(rec, "privacy", {}) or {})
        if not math.isnan(best):
            metrics[f"best_val_{monitor}"] = best
        self.mlflow.log_metrics(metrics, step=rec.round)
        self.rounds[int(rec.round)] = asdict(rec)  # a round logged again after a resume replaces its line
        mlflow.log_text("".join(json.dumps(self.rounds[r]) + "\n" for r in sorted(self.rounds)), ROUNDS_ARTIFACT)
        if rec.sites_failed:
            mlflow.set_tag(f"federation.round{rec.round}.lost", ",".join(rec.sites_failed))

    def finish(self, network: torch.nn.Module, summary: dict[str, Any], metrics: dict[str, float],
               result: Any) -> dict[str, Any]:
        """Register the global model (best round) like a centrally trained one; end the run."""
        info: dict[str, Any] = {}
        try:
            if bool(self.cfg.tracking.register):
                labels = {int(k): v for k, v in summary["class_names"].items()}
                info = register_model(network.cpu(), network_config=summary["network_config"],
                                      preprocessing=summary["preprocessing"], labels=labels, task=summary["task"],
                                      name=str(self.cfg.tracking.registered_model_name),
                                      alias=str(self.cfg.tracking.alias),
                                      tags={"federated": "true", "best_round": str(result.best_round),
                                            **{f"val_{k}": f"{v:.4f}" for k, v in metrics.items()
                                               if k != "num-examples" and math.isfinite(v)}})
            self.mlflow.end("FINISHED")
        except BaseException:
            self.mlflow.end("FAILED")
            raise
        return info

    def fail(self) -> None:
        self.mlflow.end("FAILED")


def _logged_rounds(run_id: str) -> dict[int, dict[str, Any]]:
    """The round records a run already holds in ``federation/rounds.jsonl`` (none: empty)."""
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{ROUNDS_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        log.info("run %s has no %s yet (%s)", run_id, ROUNDS_ARTIFACT, type(exc).__name__)
        return {}
    rounds = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {int(r["round"]): r for r in rounds}


BASELINES_ARTIFACT = "federation/baselines.json"


def log_baselines(cfg: DictConfig, run_id: str, comparison: dict[str, Any]) -> None:
    """The same-budget comparison of :mod:`imaging.federated.baselines` in the federation's run:
    ``baseline.<model>.val_<metric>`` for every model scored, ``ratio.<a>_vs_<b>.<metric>``, and
    the whole table as ``federation/baselines.json``."""
    tracker = MlflowTracker.from_config(cfg)
    tracker.start(run_id, str(cfg.tracking.run_name))
    try:
        metrics: dict[str, float] = {}
        for model in comparison["models"]:
            metrics.update({f"baseline.{model['name']}.val_{k}": float(v) for k, v in model["metrics"].items()
                            if k != "num-examples"})
            if model.get("steps") is not None:
                metrics[f"baseline.{model['name']}.steps"] = float(model["steps"])
        for name, values in comparison["ratios"].items():
            metrics.update({f"ratio.{name}.{k}": float(v) for k, v in values.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.log_dict(comparison, BASELINES_ARTIFACT)
        mlflow.set_tag("federation.baselines", ",".join(m["name"] for m in comparison["models"]))
    except BaseException as exc:
        # The federation itself finished: its run stays FINISHED and says the comparison failed.
        mlflow.set_tag("federation.baselines", f"failed: {type(exc).__name__}")
        raise
    finally:
        mlflow.end_run("FINISHED")
