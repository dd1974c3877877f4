"""MLflow runs for training: open or reopen, log setup/metrics/artifacts, register.

Only rank 0 builds a :class:`MlflowTracker`. The store is ``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else the embedded SQLite database
``sqlite:///${paths.mlflow_db}`` (:mod:`imaging.tracking.store`); a local store
keeps artifacts under ``paths.mlflow_artifacts``. A resumed
job passes the run id from its checkpoint and continues the same run.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

import mlflow
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from imaging.jobenv import job_tags
from imaging.records import ReviewCase
from imaging.tracking.connect import resolve_store
from imaging.tracking.inputs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    log_dataset_input,
    split_rows,
)
from imaging.tracking.registry import register_model
from imaging.tracking.review import case_dice, render_case
from imaging.tracking.store import activate, embedded_uri, reopen_run

__all__ = ["MlflowTracker", "embedded_uri", "flatten", "git_commit", "tracking_uri_from_config"]

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 500  # MLflow's limit on a param value


def tracking_uri_from_config(cfg: DictConfig, probe: bool = True) -> tuple[str, str | None]:
    """``(tracking_uri, artifact_location)``; the location is set only for the embedded store.

    See :func:`imaging.tracking.connect.resolve_store` (server, token, offline fallback).
    """
    store = resolve_store(cfg, probe)
    return store.uri, store.artifact_location


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (values cut to MLflow's param length)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(tree)[:MAX_PARAM_LEN]
    return out


def git_commit() -> str:
    """The commit of the code that runs (``+dirty`` when the tree has changes); ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if needed, tagged to open in the UI's model-training view."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = str(client.create_experiment(name, artifact_location=artifact_location,
                                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except MlflowException:  # another job created it meanwhile
            exp_id = str(client.get_experiment_by_name(name).experiment_id)  # type: ignore[union-attr]
        return exp_id
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


class _DatasetInfo(Protocol):
    @property
    def catalog_sha256(self) -> str: ...


class RegistrablePlan(Protocol):
    """What registration reads of a training plan (``imaging.plan.train.TrainPlan`` has it):
    a protocol, so tracking does not import the engine. Read-only members: any plan whose
    fields have these types fits."""

    @property
    def config_hash(self) -> str: ...
    @property
    def dataset(self) -> _DatasetInfo: ...
    @property
    def network_config(self) -> dict[str, Any]: ...
    @property
    def preprocessing(self) -> dict[str, Any]: ...
    @property
    def class_names(self) -> dict[int, str]: ...
    @property
    def task(self) -> str: ...


class MlflowTracker:
    """The training pipeline's :class:`imaging.pipelines.train.tracker.Tracker` backed by MLflow."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None,
                 registered_model_name: str, alias: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location
        self.registered_model_name = registered_model_name
        self.alias = alias
        self.run_id: str | None = None
        # Set once training logs anything: only training runs get the reviewer description
        # (the inference stage reuses this class for its own runs).
        self.trained = False
        self.selection: dict[str, Any] | None = None  # the series selection rule registered with the model
        activate(tracking_uri)  # registry in the same store, whatever the environment says
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_config(cls, cfg: DictConfig, series_rule: dict[str, Any] | None = None) -> MlflowTracker:
        """``series_rule``: the inference selection rule registered with the model (the training
        pipeline resolves it: tracking knows nothing of selection)."""
        uri, location = tracking_uri_from_config(cfg)
        tracker = cls(uri, str(cfg.tracking.experiment_name), location, str(cfg.tracking.registered_model_name),
                      str(cfg.tracking.alias))
        tracker.selection = series_rule  # issue 19: the inference selection rule travels with the model
        return tracker

    def _experiment_id(self) -> str:
        return ensure_experiment(self.client, self.experiment_name, self.artifact_location)

    def start(self, run_id: str | None, run_name: str) -> str:
        """Reopen ``run_id`` (a resumed job) or start a new run; returns the run id."""
        exp_id = self._experiment_id()
        if run_id:
            try:
                run = reopen_run(run_id, exp_id)
                log.info("continuing MLflow run %s", run_id)
                self.run_id = run.info.run_id
                self._tag_job()
                return self.run_id
            except MlflowException as exc:
                log.warning("cannot reopen MLflow run %s (%s): starting a new run", run_id, exc)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
        self.run_id = run.info.run_id
        self._tag_job()
        return self.run_id

    def _tag_job(self) -> None:
        """Slurm job id, array task, node list, world size, GPU model (a requeue re-tags the same run)."""
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        mlflow.set_tags(job_tags(gpu_model=gpu))

    def log_setup(self, config: dict[str, Any], split: dict[str, Any], dataset: dict[str, Any]) -> None:
        mlflow.log_text(yaml.safe_dump(config, sort_keys=False), "config/train.yaml")
        params = flatten({k: v for k, v in config.items() if k != "hydra"})
        params.update({f"dataset.{k}": str(v) for k, v in dataset.items() if k not in ("catalog_sha256", "config_hash")})
        items = sorted(params.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start:start + 100]))
        mlflow.set_tags({"git_commit": git_commit(), "dataset.catalog_sha256": dataset["catalog_sha256"],
                         "dataset.n_subjects": str(dataset["n_subjects"]), "torch": torch.__version__,
                         "config_hash": str(dataset.get("config_hash", ""))})
        mlflow.log_dict(split, "split.json")
        data = config.get("data") or {}
        modality = str(data.get("modality") or (data.get("preprocessing") or {}).get("modality") or "")
        labels = data.get("labels") or []
        log_dataset_input(split_rows(split, modality), str(dataset["catalog_sha256"]),
                          labels.values() if isinstance(labels, dict) else labels, "training",
                          {k: v for k, v in dataset.items() if k.startswith("n_")})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.trained = True
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}, step=step)

    def log_review(self, cases: list[ReviewCase], names: dict[int, str]) -> None:
        with tempfile.TemporaryDirectory(prefix="imaging-review-") as tmp:
            for case in cases:
                path = render_case(case, names, Path(tmp) / f"{case.series_key}.png", case_dice(case, names))
                mlflow.log_artifact(str(path), "review")

    def log_checkpoints(self, paths: list[Path]) -> None:
        for path in paths:
            mlflow.log_artifact(str(path), "checkpoints")

    def register(self, network: torch.nn.Module, plan: RegistrablePlan, metrics: dict[str, float],
                 selection: dict[str, Any]) -> dict[str, Any]:
        """Register the best weights with ``metrics`` (their epoch's validation) and lineage tags."""
        lineage = {"run_id": str(self.run_id), "config_hash": plan.config_hash,
                   "catalog_sha256": plan.dataset.catalog_sha256, "git_commit": git_commit(),
                   "job_id": os.environ.get("SLURM_JOB_ID", "local")}
        info = register_model(network, network_config=plan.network_config, preprocessing=plan.preprocessing,
                              labels=plan.class_names, task=plan.task, name=self.registered_model_name,
                              alias=self.alias, selection=selection, series_rule=self.selection,
                              tags={**lineage, **{f"val_{k}": f"{v:.4f}" for k, v in metrics.items()
                                                  if math.isfinite(v)}})
        self._registered = info
        self.trained = True
        return info

    def end(self, status: str) -> None:
        if status == "FINISHED" and self.run_id and self.trained:
            self._describe()
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)

    def _describe(self) -> None:
        # Descriptions are a convenience for reviewers: never fail a finished training for them.
        from imaging.tracking.summary import describe_model_version, describe_run

        try:
            describe_run(str(self.run_id), self.client)
            reg = getattr(self, "_registered", None)
            if reg:
                describe_model_version(reg["name"], reg["version"], self.client)
        except MlflowException:
            # Only the description is lost, not the training: say so loudly, with the cause.
            log.exception("could not write the MLflow descriptions of run %s", self.run_id)

    def describe(self) -> dict[str, str]:
        ui = (f"mlflow ui --backend-store-uri {self.tracking_uri}" if self.tracking_uri.startswith("sqlite")
              else f"open {self.tracking_uri}")
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment_name,
                "run_id": self.run_id or "", "ui_command": ui}
