"""MLflow for a cross-site evaluation (issue 31): one run in the ``evaluation`` experiment
and the figures on the evaluated model version, so a reviewer sees them on its page.

The run: per-site (``site.<name>.<metric>``) and pooled (``pooled.<metric>``) metrics,
the model version evaluated, each site's catalog hash, which sites answered and which
did not (``evaluation.gaps``), the result JSON as an artifact. The version: tags
``eval.<site>.dice_<label>`` and ``eval.pooled.dice_<label>`` (with ``eval.pooled.sites``
naming the sites the pooled figure covers) and one line in its description, replaced
by the next evaluation on the same split.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import mlflow

from imaging.tracking.runs import ensure_experiment, git_commit
from imaging.tracking.store import activate, client_for

log = logging.getLogger(__name__)

LINE_PREFIX = "Cross-site evaluation"
ARTIFACT = "evaluation/evaluation.json"


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def run_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``site.<name>.<metric>`` for each site that answered, ``pooled.<metric>``, ``sites_*`` counts."""
    out = {f"site.{site}.{k}": v for site, m in result["per_site"].items() for k, v in _finite(m).items()}
    out.update({f"pooled.{k}": v for k, v in _finite(result["pooled"]).items()})
    out["sites_answered"] = float(len(result["answered"]))
    out["sites_missing"] = float(len(result["gaps"]))
    return out


def version_tags(result: dict[str, Any], run_id: str) -> dict[str, str]:
    """The version's ``eval.*`` tags: Dice per site and pooled per label (4 decimals)."""
    tags = {"eval.run_id": run_id, "eval.split": str(result["split"]),
            "eval.pooled.sites": ",".join(pooled_sites(result)), "eval.gaps": ",".join(result["gaps"]) or "-"}
    if result.get("no_cases"):
        tags["eval.no_cases"] = ",".join(result["no_cases"])
    for site, m in [*result["per_site"].items(), ("pooled", result["pooled"])]:
        for name in result["labels"]:
            if math.isfinite(m.get(f"dice_{name}", math.nan)):
                tags[f"eval.{site}.dice_{name}"] = f"{m[f'dice_{name}']:.4f}"
    return tags


def pooled_sites(result: dict[str, Any]) -> list[str]:
    """The sites the pooled figures cover: those that answered with at least one case."""
    empty = set(result.get("no_cases") or [])
    return [s for s in result["answered"] if s not in empty]


def description_line(result: dict[str, Any], run_id: str) -> str:
    """One line for the version's description: pooled mean Dice, per site, gaps."""
    pooled = result["pooled"]
    per_site = ", ".join(f"{s} {m.get('dice_mean', math.nan):.3f} ({int(m.get('n_cases', 0))} cases)"
                         if m.get("n_cases", 0) else f"{s} no case selected"
                         for s, m in sorted(result["per_site"].items()))
    gaps = f"; no answer from {', '.join(result['gaps'])}" if result["gaps"] else ""
    return (f"{LINE_PREFIX} (split={result['split']}, MLflow run {run_id}): pooled Dice "
            f"{pooled.get('dice_mean', math.nan):.3f} over {', '.join(pooled_sites(result)) or 'no site'} "
            f"({int(pooled.get('n_cases', 0))} cases); {per_site}{gaps}")


def _describe(old: str | None, line: str, split: str) -> str:
    """``old`` with ``line`` appended; an earlier line for the same split is replaced."""
    keep = [ln for ln in (old or "").splitlines() if not ln.startswith(f"{LINE_PREFIX} (split={split},")]
    return "\n".join([*keep, line]).strip()


def log_evaluation(result: dict[str, Any], *, tracking_uri: str, artifact_location: str | None,
                   experiment_name: str, run_name: str, model_name: str, version: str) -> str:
    """Log ``result`` (the ServerApp's ``evaluation.json``) as one run; tag and describe the version.

    Returns:
        the MLflow run id.
    """
    activate(tracking_uri)
    client = client_for(tracking_uri)
    exp_id = ensure_experiment(client, experiment_name, artifact_location)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        run_id = run.info.run_id
        mlflow.log_params({"model_name": model_name, "model_version": version, "split": result["split"],
                           "sites": ",".join(result["sites"])})
        mlflow.set_tags({"imaging.kind": "evaluation", "git_commit": git_commit(),
                         "model.uri": f"models:/{model_name}/{version}", "model.requested": result["model_uri"],
                         "evaluation.answered": ",".join(result["answered"]),
                         "evaluation.gaps": ",".join(result["gaps"]) or "-",
                         "evaluation.no_cases": ",".join(result.get("no_cases") or []) or "-",
                         **{f"site.{s}.catalog_sha256": h for s, h in result["catalog_sha256"].items()}})
        mlflow.log_metrics(run_metrics(result))
        mlflow.log_dict(result, ARTIFACT)
    for key, value in version_tags(result, run_id).items():
        client.set_model_version_tag(model_name, version, key, value)
    mv = client.get_model_version(model_name, version)
    client.update_model_version(model_name, version,
                                description=_describe(mv.description, description_line(result, run_id),
                                                      str(result["split"])))
    log.info("evaluation logged: run %s; tags on %s v%s", run_id, model_name, version)
    return str(run_id)
