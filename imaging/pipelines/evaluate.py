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
from dataclasses import dataclass
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
    result: dict[str, Any]   # evaluation.json: per_site, pooled, answered, gaps, catalog hashes
    run_dir: Path
    model_name: str
    version: str
    run_id: str | None


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
    local.work_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    timeout = float(fed.connect_timeout_s) + float(fed.round_timeout_s) + 300
    try:
        local.start_superlink()
        local.start_supernodes({site: (dataset, run_dir / "sites" / site) for site, dataset in datasets.items()})
        code = local.run(config_path, timeout)
    finally:
        local.stop()
    if code != 0 or not (run_dir / RESULT).is_file():
        raise RuntimeError(f"the Flower run ended with code {code} and no {RESULT}; see {flower / 'flwr-run.log'}")


def run(cfg: DictConfig) -> EvaluateResult:
    """Evaluate ``cfg.model_uri`` at every site of ``cfg.federation``; see the module doc.

    Raises:
        UsageError: bad split, model or federation settings (before anything starts).
        RuntimeError: the Flower run failed.
    """
    if str(cfg.split) not in SPLITS:
        raise UsageError(f"split={cfg.split}: choose one of {list(SPLITS)}")
    if cfg.federation.get("superlink"):
        raise UsageError("federation.superlink: `imaging evaluate` runs local federations "
                         "(cross-hospital: docs/federated.md)")
    bundle, uri, location = _load_model(cfg)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.name)
    run_name = f"{safe}-v{bundle.version}-{cfg.split}"
    run_dir = Path(str(cfg.run_dir)) if cfg.get("run_dir") else Path(str(cfg.paths.output_dir)) / "evaluation" / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT).unlink(missing_ok=True)
    cfg.run_dir = str(run_dir)
    cfg.evaluation.model_uri = f"models:/{bundle.name}/{bundle.version}"
    datasets = site_datasets(cfg)
    _write_model(bundle, cfg, run_dir)
    _federate(cfg, run_dir, datasets)
    result = json.loads((run_dir / RESULT).read_text(encoding="utf-8"))
    result["model_uri"] = str(cfg.model_uri)
    if not result["answered"]:
        # Gaps are reported when some sites answer; none answering is no evaluation at all.
        first = next(iter(result["errors"].values()), f"none connected within federation.connect_timeout_s="
                                                      f"{cfg.federation.connect_timeout_s}")
        raise UsageError(f"no site answered the evaluation ({len(result['errors'])} error(s)); first: {first}")
    run_id = None
    if bool(cfg.tracking.get("enabled", True)):
        from imaging.tracking.evaluation import log_evaluation

        run_id = log_evaluation(result, tracking_uri=uri, artifact_location=location,
                                experiment_name=str(cfg.evaluation.experiment_name), run_name=run_name,
                                model_name=bundle.name, version=bundle.version)
    return EvaluateResult(result, run_dir, bundle.name, bundle.version, run_id)
