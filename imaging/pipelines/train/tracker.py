"""The rank-0 experiment tracker of a training run: what the run needs of it, and which run it continues.

One training is one MLflow run whatever happens to the job: a requeued job, a job that died
before its first checkpoint and a job that ran offline for a while all continue the run they
started (the run id is kept in the checkpoint, in ``mlflow_run_id`` and in the run dir's ledger
of stores; :mod:`imaging.tracking.sync`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf

from imaging.data.splits import Split
from imaging.fsutil import atomic_write_text
from imaging.plan.train import TrainPlan
from imaging.records import ReviewCase

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"


class Tracker(Protocol):
    """What the loop needs from experiment tracking (rank 0 only); see
    :class:`imaging.tracking.runs.MlflowTracker`."""

    def start(self, run_id: str | None, run_name: str) -> str: ...
    def log_setup(self, config: dict[str, Any], split: dict[str, Any], dataset: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_review(self, cases: list[ReviewCase], names: dict[int, str]) -> None: ...
    def log_checkpoints(self, paths: list[Path]) -> None: ...
    def register(self, network: torch.nn.Module, plan: TrainPlan, metrics: dict[str, float],
                 selection: dict[str, Any]) -> dict[str, Any]: ...
    def end(self, status: str) -> None: ...
    def describe(self) -> dict[str, str]: ...


def default_tracker(cfg: DictConfig) -> Tracker | None:
    # Imported here, only by default: callers (tests, benchmarks) may pass their own
    # factory or none, and a run without tracking never loads MLflow.
    if not cfg.tracking.get("enabled", True):
        return None
    from imaging.selection.apply import rule_for_registry
    from imaging.tracking.runs import MlflowTracker

    return MlflowTracker.from_config(cfg, series_rule=rule_for_registry(cfg))


def open_run(cfg: DictConfig, plan: TrainPlan, tracker: Tracker, known: str | None,
             payload: dict[str, Any] | None, split: Split) -> str:
    """Start (or reopen) this training's run on ``tracker``; its id is written to ``mlflow_run_id``.

    Args:
        known: the run id the checkpoint holds (``None``: no checkpoint, or one without a run).
        payload: the checkpoint resumed from (``None``: a fresh start).
        split: logged with the config and the dataset's counts when the run is new.
    """
    id_file = plan.run_dir / RUN_ID_FILE
    # A run id without a checkpoint: the job died before its first checkpoint; reuse the run.
    known = known or (id_file.read_text().strip() if id_file.is_file() and payload is None
                      and str(cfg.trainer.resume) != "never" and not (plan.run_dir / "checkpoints").is_dir()
                      else None)
    store = getattr(tracker, "tracking_uri", None)  # MlflowTracker's; a test's own tracker may lack it
    if isinstance(store, str):
        known = _run_in_store(plan.run_dir, store, known, fresh=payload is None and known is None)
    run_id = tracker.start(known, str(cfg.tracking.run_name))
    atomic_write_text(id_file, run_id + "\n")
    if isinstance(store, str):
        from imaging.tracking.sync import record_run

        record_run(plan.run_dir, store, run_id)
    if run_id != known:  # a new run (or the old one could not be reopened)
        tracker.log_setup(OmegaConf.to_container(cfg, resolve=True), split.to_json(), {  # type: ignore[arg-type]
            "catalog_sha256": plan.dataset.catalog_sha256, "n_rows": len(plan.dataset.rows),
            "n_ok": len(plan.dataset.ok_rows), "n_items": len(plan.items),
            "n_subjects": len({i["subject_key"] for i in plan.items}),
            "n_train": len(split.train), "n_val": len(split.val), "config_hash": plan.config_hash,
        })
    return run_id


def _run_in_store(run_dir: Path, store: str, known: str | None, fresh: bool) -> str | None:
    """The run to continue in ``store``: one training, one run, whatever stores it touched.

    The run dir's ledger names this training's run in each store. Back on a server after an
    offline segment (server down, job requeued), the offline epochs are uploaded into the
    training's server run first and that run continues; offline, the store's own run continues.
    ``known`` (the checkpoint's id) is used only when the ledger says nothing of this store and
    the id is not another store's. ``fresh``: a new training here (no checkpoint, no run id):
    it continues nothing (an earlier training's offline runs are uploaded as their own).
    """
    from imaging.tracking.connect import is_server
    from imaging.tracking.sync import forget_runs, read_runs, rejoin, store_key

    if fresh:
        forget_runs(run_dir)

    if is_server(store):
        try:
            rejoined = rejoin(run_dir, store)
        except Exception as exc:  # noqa: BLE001 - training goes on; `imaging mlflow sync` uploads it later
            log.warning("could not upload this training's offline MLflow store (%s): `imaging mlflow sync %s` "
                        "will", type(exc).__name__, run_dir)
            rejoined = None
        if rejoined:
            return rejoined
    runs = read_runs(run_dir)
    mine = runs.get(store_key(run_dir, store))
    if mine:
        return mine
    return None if known in runs.values() else known
