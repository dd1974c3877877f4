"""``run(cfg) -> TrainResult``: one training run, single process or DDP.

Order of work: validate the config (fail before anything starts), join the
process group, find the run directory (deterministic from the config:
``paths.output_dir/<experiment>/<run_name>-cfg<hash>``) and its last checkpoint, open
(or reopen) the MLflow run on rank 0, build data/model/optimizer, restore,
loop, and at the end register the best model. A preemption signal on any rank
stops every rank at the same step; the last checkpoint is written and the run
returns ``preempted=True`` (the app exits with ``EXIT_PREEMPTED``).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from imaging.data.datasets import build_train_loader, build_val_loader
from imaging.data.splits import split_by_subject
from imaging.data.transforms import (
    build_inference_transforms,
    build_train_transforms,
    pipeline_hash,
)
from imaging.engine import checkpoint as ckpt
from imaging.engine.distributed import (
    Dist,
    any_rank,
    barrier,
    broadcast_object,
    setup,
    sync_buffers,
    teardown,
)
from imaging.engine.loops import ValidationInterrupted, lr_lambda, train_one_epoch, validate
from imaging.engine.recipe import build_loss, configure_determinism, wrap_model
from imaging.engine.review_cases import review_cases
from imaging.launch.preempt import PreemptionFlag, mark_preempted
from imaging.models.registry import build_network
from imaging.pipelines.train.resume import (
    check_identity,
    find_resume,
    read_finished,
    write_finished,
)
from imaging.pipelines.train.tracker import Tracker, default_tracker, open_run
from imaging.plan.train import TrainPlan, validate_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str | None
    best_metric: float
    best_epoch: int
    epochs_done: int
    preempted: bool
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    registered: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, str] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)  # validation of the best.pt epoch
    already_done: bool = False        # a finished run found again: nothing trained or registered
    previously_registered: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run(cfg: DictConfig, *, tracker_factory: Callable[[DictConfig], Tracker | None] | None = default_tracker,
        flag: PreemptionFlag | None = None, on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Train as configured; see the module docstring.

    Args:
        cfg: the composed ``train`` config.
        tracker_factory: builds the rank-0 tracker (``None``: no tracking).
        flag: preemption flag (default: a new one with SIGUSR1/SIGTERM handlers).
        on_epoch_end: called with the number of finished epochs after each epoch's
            checkpoint (tests use it to raise a real signal at a chosen point).

    Raises:
        ConfigError: invalid config, before any work.
    """
    plan = validate_config(cfg)
    # Handlers first: a USR1/TERM during the rendezvous (which can wait minutes for the
    # other nodes) must set the flag, not kill the process with the default action.
    own_flag = flag is None
    flag = flag or PreemptionFlag().install()
    d: Dist | None = None
    try:
        d = setup(str(cfg.trainer.accelerator))
        result = _run(cfg, plan, d, tracker_factory, flag, on_epoch_end)
        if result.preempted:
            mark_preempted(d.is_main)  # before the barrier: no rank exits (exit 3) before it exists
            barrier(d)
        return result
    finally:
        if own_flag:
            flag.uninstall()
        if d is not None:
            teardown(d)


def _cached_part(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What the cached items depend on: not the precision (the model's, not the data's)."""
    return {k: v for k, v in preprocessing.items() if k != "precision"}


def _network_key(plan: TrainPlan) -> str:
    return json.dumps(plan.network_config, sort_keys=True)


def _run(cfg: DictConfig, plan: TrainPlan, d: Dist, tracker_factory: Any, flag: PreemptionFlag,
         on_epoch_end: Callable[[int], None] | None) -> TrainResult:
    t = cfg.trainer
    seed = int(t.seed)
    seed_everything(seed)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    check_identity(cfg, plan)
    payload = find_resume(cfg, plan)
    done = read_finished(plan, payload, int(t.max_epochs))
    if done is not None:
        # Same configuration, same data, nothing left to train: register nothing new.
        log.info("run %s already finished (%d epochs, MLflow run %s, registered %s): nothing to do",
                 plan.run_dir, done["epochs_done"], done.get("run_id"), done.get("registered") or "nothing")
        return TrainResult(run_id=done.get("run_id"), best_metric=float(done["best_metric"]),
                           best_epoch=int(done["best_epoch"]), epochs_done=int(done["epochs_done"]),
                           preempted=False, metrics=dict(done.get("best_metrics", {})), run_dir=plan.run_dir,
                           class_names=plan.class_names, already_done=True,
                           previously_registered=dict(done.get("registered") or {}))
    state = ckpt.TrainState() if payload is None else ckpt.TrainState(**{
        k: v for k, v in payload["state"].items() if k in ckpt.TrainState.__dataclass_fields__})
    state.run_id = state.run_id or None
    state.extra.setdefault("catalog_sha256", plan.dataset.catalog_sha256)
    state.extra.setdefault("network", _network_key(plan))
    split = split_by_subject(plan.items, int(cfg.data.split.folds), int(cfg.data.split.fold),
                             int(cfg.data.split.seed))

    tracker = tracker_factory(cfg) if (tracker_factory is not None and d.is_main) else None
    run_id = open_run(cfg, plan, tracker, state.run_id, payload, split) if tracker is not None else None
    run_id = broadcast_object(run_id, d)  # type: ignore[assignment]
    state.run_id = run_id
    try:
        return _train(cfg, plan, d, tracker, flag, on_epoch_end, payload, state, split)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise


def _train(cfg: DictConfig, plan: TrainPlan, d: Dist, tracker: Tracker | None, flag: PreemptionFlag,
           on_epoch_end: Callable[[int], None] | None, payload: dict[str, Any] | None, state: ckpt.TrainState,
           split: Any) -> TrainResult:
    t = cfg.trainer
    seed = int(t.seed)
    ckpt_dir = plan.run_dir / "checkpoints"
    run_id = state.run_id

    amp = bool(t.amp) and d.device.type == "cuda"
    configure_determinism(bool(t.deterministic), d.device)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    cache = str(cfg.data.cache)
    cache_root = Path(str(cfg.data.cache_dir)) / pipeline_hash(  # a re-ingested catalog: another cache
        _cached_part(plan.preprocessing), data_cfg, [plan.dataset.catalog_sha256])  # type: ignore[arg-type]
    train_tf = build_train_transforms(plan.preprocessing, data_cfg)  # type: ignore[arg-type]
    val_tf = build_inference_transforms(plan.preprocessing, with_label=True)
    workers = int(cfg.data.num_workers)
    train_loader = build_train_loader(split.train, train_tf, cache=cache, cache_dir=cache_root / "train",
                                      batch_size=int(cfg.data.batch_size), num_workers=workers, seed=seed,
                                      rank=d.rank, world_size=d.world_size,
                                      drop_last=plan.task == "classification")
    val_loader = build_val_loader(split.val, val_tf, cache=cache, cache_dir=cache_root / "val",
                                  num_workers=workers, rank=d.rank, world_size=d.world_size)

    seed_everything(seed)  # model init must not depend on how much RNG data set-up consumed
    network, model = wrap_model(build_network(plan.network_config).to(d.device), d,
                                sync_batchnorm=bool(t.sync_batchnorm), compile_model=bool(t.compile))
    optimizer = torch.optim.AdamW(network.parameters(), lr=float(t.lr), weight_decay=float(t.weight_decay))
    max_steps = t.get("limit_train_batches")
    steps_per_epoch = len(train_loader) if max_steps is None else min(len(train_loader), int(max_steps))
    accumulate = int(t.accumulate_grad_batches)
    total_opt_steps = int(t.max_epochs) * math.ceil(steps_per_epoch / accumulate)
    sched_cfg = t.scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        str(sched_cfg.kind), int(sched_cfg.warmup_epochs) * math.ceil(steps_per_epoch / accumulate),
        total_opt_steps, float(sched_cfg.min_lr_factor)))
    # bfloat16 has float32's range: no loss scaling (and no skipped steps) needed.
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp and str(t.amp_dtype) == "float16")
    loss_fn = build_loss(plan.task, plan.network_config)
    if payload is not None:
        ckpt.restore(payload, model=network, optimizer=optimizer, scheduler=scheduler, scaler=scaler, rng=True)

    # Resolved and checked against the metrics validate() returns (imaging.plan.train._monitor).
    maximize = plan.monitor_mode == "max"
    monitor = plan.monitor
    last_val: dict[str, float] = dict(state.extra.get("last_val", {}))
    preempted = False
    skip = state.step_in_epoch
    for epoch in range(state.epoch, int(t.max_epochs)):
        res = train_one_epoch(
            model=model, loader=train_loader, epoch=epoch, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            loss_fn=loss_fn, d=d, amp=amp, accumulate=accumulate, skip_batches=skip,
            should_stop=lambda: flag.requested, max_steps=max_steps, progress=bool(t.progress),
            amp_dtype=str(t.amp_dtype), grad_clip_norm=None if t.grad_clip_norm is None else float(t.grad_clip_norm))
        state.global_step += res.optimizer_steps
        if res.preempted:
            state.step_in_epoch = skip + res.steps
            preempted = True
            break
        skip = 0
        state.epoch, state.step_in_epoch = epoch + 1, 0
        metrics = {"train_loss": res.loss, "lr": float(scheduler.get_last_lr()[0]),
                   "data_wait_fraction": res.data_wait_fraction, "samples_per_s": res.samples_per_s}
        if res.skipped_steps:
            metrics["skipped_steps"] = float(res.skipped_steps)
        improved = False
        validated = False
        sync_buffers(network, d)  # the checkpoint holds rank 0's buffers: everyone uses those
        if state.epoch % int(t.val_every) == 0 or state.epoch == int(t.max_epochs):
            try:
                last_val = validate(model=network, loader=val_loader, task=plan.task, num_classes=plan.num_classes,
                                    names=plan.class_names, d=d, roi_size=plan.preprocessing["roi_size"],
                                    sw_batch_size=int(t.sw_batch_size), overlap=float(t.sw_overlap), amp=amp,
                                    amp_dtype=str(t.amp_dtype),
                                    hd95=bool(t.hd95), progress=bool(t.progress),
                                    should_stop=lambda: flag.requested)
            except ValidationInterrupted:
                # Keep the epoch's training (checkpointed below); only this validation is skipped.
                log.warning("stop signal during validation of epoch %d: validation skipped, checkpointing",
                            state.epoch)
                preempted = True
            else:
                metrics.update({f"val_{k}": v for k, v in last_val.items()})
                validated = True
                value = last_val.get(monitor, math.nan)
                improved = not math.isnan(value) and (
                    state.best_epoch == 0 or (value > state.best_metric if maximize else value < state.best_metric))
                if improved:
                    state.best_metric, state.best_epoch = value, state.epoch
        state.extra = {"last_val": last_val, "catalog_sha256": plan.dataset.catalog_sha256,
                       "network": _network_key(plan)}
        if d.is_main:
            if improved:
                ckpt.save_checkpoint(ckpt_dir / ckpt.BEST, model=network, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, state=state)
            ckpt.save_checkpoint(ckpt_dir / ckpt.LAST, model=network, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, state=state)
            if tracker is not None:
                tracker.log_metrics({**metrics, "best_" + monitor: state.best_metric}, step=state.epoch)
        log.info("epoch %d/%d loss %.4f data-wait %.1f%% %.1f samples/s %s", state.epoch, t.max_epochs, res.loss,
                 100 * res.data_wait_fraction, res.samples_per_s,
                 " ".join(f"{k}={v:.4f}" for k, v in last_val.items() if k.startswith(("dice", "auc", "acc")))
                 if validated else "")
        barrier(d)
        if on_epoch_end is not None:
            on_epoch_end(state.epoch)
        if preempted or (state.epoch < int(t.max_epochs) and any_rank(flag.requested, d)):
            preempted = True
            break

    if preempted and d.is_main:
        ckpt.save_checkpoint(ckpt_dir / ckpt.LAST, model=network, optimizer=optimizer, scheduler=scheduler,
                             scaler=scaler, state=state)
        log.warning("preempted after %d epoch(s) + %d batch(es): checkpoint %s", state.epoch,
                    state.step_in_epoch, ckpt_dir / ckpt.LAST)
    barrier(d)
    result = TrainResult(run_id=run_id, best_metric=state.best_metric, best_epoch=state.best_epoch,
                         epochs_done=state.epoch, preempted=preempted, metrics=last_val, run_dir=plan.run_dir,
                         checkpoints={"last": str(ckpt_dir / ckpt.LAST), "best": str(ckpt_dir / ckpt.BEST)},
                         class_names=plan.class_names)
    if not preempted:
        payload_best = ckpt.load_checkpoint(ckpt_dir / ckpt.BEST) if (ckpt_dir / ckpt.BEST).is_file() else None
        # Registration and the summary use the epoch that produced best.pt, not the last one.
        result.best_metrics = dict((payload_best or {"state": state.__dict__})["state"]["extra"].get("last_val", {}))
    sp = cfg.data.split
    selection = {"monitor": monitor, "mode": "max" if maximize else "min", "value": state.best_metric,
                 "best_epoch": state.best_epoch, "split": f"fold{sp.fold}of{sp.folds}-seed{sp.seed}"}
    if tracker is not None:
        try:
            if not preempted:
                _finish(cfg, plan, tracker, ckpt_dir, val_loader, d, result, selection)
            result.tracking = tracker.describe()
        finally:
            tracker.end("KILLED" if preempted else "FINISHED")
    if not preempted and d.is_main:
        write_finished(plan, {"epochs_done": state.epoch, "run_id": run_id, "best_epoch": state.best_epoch,
                              "best_metric": state.best_metric, "best_metrics": result.best_metrics,
                              "registered": result.registered, "config_hash": plan.config_hash})
    return result


def _finish(cfg: DictConfig, plan: TrainPlan, tracker: Tracker, ckpt_dir: Path, val_loader: Any, d: Dist,
            result: TrainResult, selection: dict[str, Any]) -> None:
    """Rank 0, after the last epoch: best weights -> review images, checkpoints, registry."""
    best_path = ckpt_dir / ckpt.BEST
    source = best_path if best_path.is_file() else ckpt_dir / ckpt.LAST
    network = build_network(plan.network_config)
    ckpt.restore(ckpt.load_checkpoint(source), model=network, rng=False)
    network.to(d.device).eval()
    tr = cfg.tracking
    if plan.task == "segmentation" and int(tr.review_cases) > 0:
        cases = review_cases(network, val_loader, int(tr.review_cases), plan.preprocessing["roi_size"], d.device,
                             amp=bool(cfg.trainer.amp) and d.device.type == "cuda", amp_dtype=str(cfg.trainer.amp_dtype))
        tracker.log_review(cases, plan.class_names)
    if bool(tr.log_checkpoints):
        tracker.log_checkpoints([p for p in (best_path, ckpt_dir / ckpt.LAST) if p.is_file()])
    if bool(tr.register):
        result.registered = tracker.register(network.cpu(), plan, result.best_metrics, selection)
