"""``imaging evaluate``: a registered model evaluated at every site of a federation (issue 31).

The coordinator resolves ``models:/NAME@ALIAS`` to a pinned version once, writes its files
(weights + bundle config) into the run dir, and starts the federation as ``imaging
federate`` does (the same sites and site datasets; the demo's synthetic sites prepared the
same way): a SuperLink and one SuperNode per site, real Flower processes. The ServerApp
sends the model to every site (:mod:`imaging.federated.cross_site`); each site runs our
inference on its labelled cases and answers with aggregates only
(:mod:`imaging.federated.evaluation`). The result is logged as one MLflow run in the
``evaluation`` experiment and on the model version (:mod:`imaging.tracking.evaluation`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imaging.errors import UsageError
from imaging.federated.config import write_server_config
from imaging.federated.cross_site import MODEL_DIR, RESULT
from imaging.federated.evaluation import SPLITS, EvalRequest
from imaging.federated.processes import LocalFederation
from imaging.fsutil import atomic_write_text
from imaging.pipelines.federate import site_datasets
from imaging.selection.apply import resolve_rule

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    result: dict[str, Any]   # evaluation.json: per_site, pooled, answered, gaps, catalog hashes ({}: submitted)
    run_dir: Path
    model_name: str
    version: str
    run_id: str | None
    jobs: dict[str, str] = field(default_factory=dict)     # launcher=slurm: role[:site] -> Slurm job id
    scripts: dict[str, str] = field(default_factory=dict)  # role[:site] -> its sbatch script


# Where the coordinator's result goes (the MLflow store, experiment, run and model version): written
# at the start, read by finish() here or at the end of the SuperLink job on Slurm.
TARGET = "tracking.json"


def _load_model(cfg: DictConfig) -> tuple[Any, str, str | None]:
    """The registered model (pinned version), the tracking URI and artifact location.

    Raises:
        UsageError: malformed URI, unknown model/alias/version, or not a segmentation model.
    """
    from mlflow.exceptions import MlflowException

    from imaging.tracking.registry import load_bundle
    from imaging.tracking.runs import tracking_uri_from_config

    uri, location = tracking_uri_from_config(cfg)
    try:
        bundle = load_bundle(str(cfg.model_uri), uri)
    except (ValueError, MlflowException) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"model={cfg.model_uri}: {first} (store: {uri}; `imaging model list` shows its models)") \
            from None
    if bundle.task != "segmentation":
        raise UsageError(f"model={cfg.model_uri}: task '{bundle.task}'; cross-site evaluation scores segmentation")
    return bundle, uri, location


def _write_model(bundle: Any, cfg: DictConfig, run_dir: Path) -> None:
    """The model's files + the request the ServerApp sends with them (no registry on its side)."""
    from imaging.tracking.registry import write_bundle

    model_dir = run_dir / MODEL_DIR
    # The rule the sites apply: the model's own (``select`` as `imaging infer` reads it), validated here
    # so that a malformed one stops the run before any site starts.
    rule = resolve_rule(cfg.get("select"), getattr(bundle, "selection", None))
    write_bundle(model_dir, bundle.network, bundle.network_config, bundle.preprocessing, bundle.labels, bundle.task,
                 bundle.selection)
    inference = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    request = EvalRequest(bundle.network_config, bundle.preprocessing, bundle.labels, str(cfg.split),
                          int(cfg.data.split.folds), int(cfg.data.split.fold), int(cfg.data.split.seed),
                          {k: v for k, v in dict(inference or {}).items() if k != "labels"},  # type: ignore[arg-type]
                          rule.source if rule is not None else None)
    atomic_write_text(model_dir / "request.json", request.to_json())


def _federate(cfg: DictConfig, run_dir: Path, datasets: dict[str, Path]) -> None:
    """Start the local federation, run the evaluation ServerApp, stop everything.

    Raises:
        RuntimeError: the Flower run failed or wrote no result (its log is named).
    """
    config_path = write_server_config(cfg, run_dir)
    flower = run_dir / "flower"
    shutil.rmtree(flower, ignore_errors=True)  # a SuperLink database of an earlier run lists stale nodes
    local = LocalFederation(flower)
    fed = cfg.federation
    timeout = float(fed.connect_timeout_s) + float(fed.round_timeout_s) + 300
    code = local.run_sites({site: (dataset, run_dir / "sites" / site) for site, dataset in datasets.items()},
                           config_path, timeout)
    if code != 0 or not (run_dir / RESULT).is_file():
        raise RuntimeError(f"the Flower run ended with code {code} and no {RESULT}; see {flower / 'flwr-run.log'}")


def run(cfg: DictConfig) -> EvaluateResult:
    """Evaluate ``cfg.model_uri`` at every site of ``cfg.federation``; see the module doc.
    ``launcher=slurm``: submit the SuperLink and SuperNode jobs instead (the SuperLink job
    logs the result); ``finish_only=true``: only log the result of ``cfg.run_dir``.

    Raises:
        UsageError: bad split, model or federation settings (before anything starts); no
            site answered.
        RuntimeError: the Flower run failed.
    """
    if cfg.get("finish_only"):
        if not cfg.get("run_dir"):
            raise UsageError("finish_only=true: name the evaluation's run_dir=...")
        return finish(Path(str(cfg.run_dir)))
    if str(cfg.split) not in SPLITS:
        raise UsageError(f"split={cfg.split}: choose one of {list(SPLITS)}")
    if cfg.federation.get("superlink"):
        raise UsageError("federation.superlink: `imaging evaluate` runs local federations "
                         "(cross-hospital: docs/federated.md)")
    bundle, uri, location = _load_model(cfg)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.name)
    run_name = f"{safe}-v{bundle.version}-{cfg.split}"
    run_dir = Path(str(cfg.run_dir)) if cfg.get("run_dir") else Path(str(cfg.paths.output_dir)) / "evaluation" / run_name
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT).unlink(missing_ok=True)
    cfg.run_dir = str(run_dir)
    cfg.evaluation.model_uri = f"models:/{bundle.name}/{bundle.version}"
    datasets = site_datasets(cfg)
    _write_model(bundle, cfg, run_dir)
    slurm = str(cfg.launcher.get("name")) == "slurm"
    store = str(cfg.launcher.get("mlflow_tracking_uri") or uri) if slurm else uri
    target = {"tracking_uri": store, "artifact_location": location if store == uri else None, "enabled": bool(cfg.tracking.get("enabled", True)),
              "experiment_name": str(cfg.evaluation.experiment_name), "run_name": run_name,
              "model_name": bundle.name, "version": str(bundle.version), "model_uri": str(cfg.model_uri),
              "connect_timeout_s": float(cfg.federation.connect_timeout_s)}
    atomic_write_text(run_dir / TARGET, json.dumps(target, indent=2, sort_keys=True))
    if slurm:
        return _submit(cfg, run_dir, datasets, bundle)
    _federate(cfg, run_dir, datasets)
    return finish(run_dir)


def _submit(cfg: DictConfig, run_dir: Path, datasets: dict[str, Path], bundle: Any) -> EvaluateResult:
    """Render and submit the Slurm jobs (``imaging.launch.federate``); the SuperLink job ends
    with ``imaging evaluate ... finish_only=true``, which logs the result as a local run does."""
    from imaging.launch.federate import evaluation_jobs, submit

    jobs = evaluation_jobs(cfg, datasets, finish=finish_command(cfg, run_dir, bundle.name, str(bundle.version)),
                           workdir=Path.cwd())
    ids = submit(cfg, jobs, dry_run=bool(cfg.get("dry_run", False)),
                 sbatch_exe=str(cfg.launcher.get("sbatch") or "sbatch"))
    scripts = {(j.role if j.site is None else f"{j.role}:{j.site}"): str(j.script_path) for j in jobs}
    return EvaluateResult({}, run_dir, bundle.name, str(bundle.version), None, ids, scripts)


def finish_command(cfg: DictConfig, run_dir: Path, model_name: str, version: str) -> str:
    """The command the SuperLink job ends with: log this run dir's result (the pinned version)."""
    import shlex

    words = [f"model=models:/{model_name}/{version}", f"run_dir={run_dir}", "finish_only=true",
             f"paths.root_dir={cfg.paths.root_dir}"]
    return f"{cfg.launcher.get('imaging_cmd') or 'imaging'} evaluate " + " ".join(map(shlex.quote, words))


def finish(run_dir: Path) -> EvaluateResult:
    """Log ``<run_dir>/evaluation.json`` (the ServerApp's result) where ``<run_dir>/tracking.json``
    says: one MLflow run, the version's tags and description line.

    Raises:
        UsageError: no result in ``run_dir`` (the Flower run failed) or no site answered.
    """
    if not (run_dir / RESULT).is_file() or not (run_dir / TARGET).is_file():
        raise UsageError(f"run_dir={run_dir}: no {RESULT} and {TARGET} (the evaluation did not run to its end; "
                         f"see {run_dir / 'flower'} or {run_dir / 'slurm'})")
    target = json.loads((run_dir / TARGET).read_text(encoding="utf-8"))
    result = json.loads((run_dir / RESULT).read_text(encoding="utf-8"))
    result["model_uri"] = str(target["model_uri"])
    if not result["answered"]:
        # Gaps are reported when some sites answer; none answering is no evaluation at all.
        first = next(iter(result["errors"].values()), f"none connected within federation.connect_timeout_s="
                                                      f"{target['connect_timeout_s']:g}")
        raise UsageError(f"no site answered the evaluation ({len(result['errors'])} error(s)); first: {first}")
    run_id = None
    if target["enabled"]:
        from imaging.tracking.evaluation import log_evaluation

        run_id = log_evaluation(result, tracking_uri=str(target["tracking_uri"]),
                                artifact_location=target["artifact_location"],
                                experiment_name=str(target["experiment_name"]), run_name=str(target["run_name"]),
                                model_name=str(target["model_name"]), version=str(target["version"]))
    return EvaluateResult(result, run_dir, str(target["model_name"]), str(target["version"]), run_id)
