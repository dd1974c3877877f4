"""One hospital's side of a federation: the same engine, configs and data code as
central training, on the site's own ``imaging ingest`` dataset.

A :class:`Site` is built from the federation's *recipe* (the resolved ``data``,
``model`` and ``trainer`` groups sent by the coordinator, without paths) and the
site's own settings (its dataset folder and scratch folder, from the SuperNode's
``--node-config``). What leaves the site is only what :meth:`Site.train` and
:meth:`Site.evaluate` return: weights and aggregate numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from imaging.data.datasets import build_train_loader, build_val_loader
from imaging.data.splits import split_by_subject
from imaging.data.transforms import build_inference_transforms, build_train_transforms
from imaging.engine.distributed import Dist, setup
from imaging.engine.loops import lr_lambda, train_one_epoch, validate
from imaging.engine.recipe import build_loss
from imaging.models.registry import build_network
from imaging.plan.train import ConfigError, TrainPlan, validate_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSettings:
    """What a site's SuperNode is started with (``--node-config``); never sent anywhere."""

    name: str
    dataset_dir: Path
    work_dir: Path

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SiteSettings:
        """Read ``site``, ``dataset-dir`` and ``work-dir`` from a SuperNode's node config.

        Raises:
            ConfigError: a key is missing or the dataset folder does not exist.
        """
        for key in ("site", "dataset-dir", "work-dir"):
            if not str(node_config.get(key, "")).strip():
                raise ConfigError(f"node-config.{key}", "is required: flower-supernode --node-config "
                                  "'site=\"A\" dataset-dir=\"/data/ds\" work-dir=\"/scratch/a\"'")
        dataset = Path(str(node_config["dataset-dir"]))
        if not dataset.is_dir():
            raise ConfigError("node-config.dataset-dir", f"'{dataset}': no such folder")
        return cls(str(node_config["site"]), dataset, Path(str(node_config["work-dir"])))


def site_config(recipe_yaml: str, settings: SiteSettings) -> DictConfig:
    """The site's training config: the coordinator's recipe plus the site's own paths."""
    cfg = OmegaConf.create(recipe_yaml)
    assert isinstance(cfg, DictConfig)
    cfg.data.dataset_dir = str(settings.dataset_dir)
    cfg.data.cache_dir = str(settings.work_dir / "cache")
    cfg.run_dir = str(settings.work_dir)
    # Sites train, validate and evaluate in fp32 (amp=False below): the preprocessing the model is
    # registered with must say so, or inference would serve it in the trainer config's precision.
    cfg.trainer.amp = False
    return cfg


def plan_summary(plan: TrainPlan) -> dict[str, Any]:
    """What a site tells the coordinator about its data: no rows, no keys, no paths."""
    return {"class_names": {str(k): v for k, v in plan.class_names.items()},
            "network_config": plan.network_config, "preprocessing": plan.preprocessing, "task": plan.task,
            "catalog_sha256": plan.dataset.catalog_sha256, "n_cases": len(plan.items),
            "n_subjects": len({i["subject_key"] for i in plan.items})}


def epoch_index(server_round: int, local_epochs: int, local: int) -> int:
    """The site's epoch number of local epoch ``local`` (0-based) in ``server_round`` (1-based).

    Counting on from round to round (not 0..n-1 again) is what makes each round draw
    new patches: the loader seeds its draws by (seed, rank, epoch, index).
    """
    if server_round < 1 or not 0 <= local < local_epochs:
        raise ValueError(f"server_round={server_round} (>= 1), local epoch {local} of {local_epochs}")
    return (server_round - 1) * local_epochs + local


class Site:
    """The site's model, loaders and optimizer settings for one federated run."""

    def __init__(self, cfg: DictConfig, settings: SiteSettings,
                 train_items: list[dict[str, Any]] | None = None) -> None:
        """``train_items`` replaces the site's training split (the pooled baseline of
        :mod:`imaging.federated.baselines` trains on every site's); validation stays the site's."""
        self.cfg = cfg
        self.settings = settings
        self.plan = validate_config(cfg)
        self.d: Dist = setup(str(cfg.trainer.accelerator))
        torch.manual_seed(int(cfg.trainer.seed))
        split = split_by_subject(self.plan.items, int(cfg.data.split.folds), int(cfg.data.split.fold),
                                 int(cfg.data.split.seed))
        self.train_items, self.val_items = split.train, split.val  # this site's own split
        train_items = split.train if train_items is None else train_items
        self.n_train, self.n_val = len(train_items), len(split.val)
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        train_tf = build_train_transforms(self.plan.preprocessing, data_cfg)  # type: ignore[arg-type]
        val_tf = build_inference_transforms(self.plan.preprocessing, with_label=True)
        # Memory cache only: a federated site process may be restarted for every round, and
        # its disk cache is a site-local concern that central training already covers.
        cache = "memory" if str(cfg.data.cache) == "memory" else "none"
        self.train_loader = build_train_loader(train_items, train_tf, cache=cache, cache_dir=None,
                                               batch_size=int(cfg.data.batch_size), num_workers=0,
                                               seed=int(cfg.trainer.seed), rank=0, world_size=1,
                                               drop_last=self.plan.task == "classification")
        self.val_loader = build_val_loader(split.val, val_tf, cache=cache, cache_dir=None, num_workers=0,
                                           rank=0, world_size=1)
        torch.manual_seed(int(cfg.trainer.seed))  # the coordinator's round-0 weights (initial_network)
        self.network = build_network(self.plan.network_config).to(self.d.device)
        # The same loss as central training (Dice+CE, deep supervision heads when the network has them).
        self.loss: Callable[..., torch.Tensor] = build_loss(self.plan.task, self.plan.network_config)
        # The local optimizer kept between rounds (``keep_optimizer``) and the round it last trained.
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_round = 0

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.network.state_dict().items()}

    def train(self, state: dict[str, torch.Tensor], *, epochs: int, lr: float, proximal_mu: float = 0.0,
              server_round: int = 1, total_epochs: int | None = None, keep_optimizer: bool = False,
              ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Start from the global ``state``, train ``epochs`` local epochs; new weights + metrics.

        ``proximal_mu > 0`` adds FedProx's term ``mu/2 * ||w - w_global||^2`` to the loss
        (the value Flower's FedProx strategy sends in the round's config).
        ``server_round`` (1-based) places the local epochs on the site's epoch axis
        (:func:`epoch_index`): the loader's draws are a function of the epoch index, so
        every round sees new crops, flips and noise, and a resumed round the same ones.
        ``total_epochs`` (rounds x local epochs) puts the learning rate on the same axis:
        ``lr`` is the peak and ``trainer.scheduler`` (kind, warmup, floor) runs per optimizer
        step over the whole federation, as central training runs it over ``max_epochs``;
        ``None`` keeps ``lr`` constant.
        ``keep_optimizer`` carries AdamW's moment estimates over from the site's previous round
        when that round was ``server_round - 1`` (:meth:`_local_optimizer`).
        """
        self.load(state)
        optimizer = self._local_optimizer(lr, server_round, keep_optimizer)
        t = self.cfg.trainer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule(server_round, epochs, total_epochs))
        scaler = torch.amp.GradScaler(self.d.device.type, enabled=False)
        loss_fn = self.loss
        if proximal_mu > 0:
            anchor = [p.detach().clone() for p in self.network.parameters()]
            params = list(self.network.parameters())

            def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                return self.loss(logits, target) + 0.5 * proximal_mu * prox  # type: ignore[operator]

        losses, steps = [], 0
        for local in range(epochs):
            res = train_one_epoch(model=self.network, loader=self.train_loader,
                                  epoch=epoch_index(server_round, epochs, local), optimizer=optimizer,
                                  scheduler=scheduler, scaler=scaler, loss_fn=loss_fn, d=self.d, amp=False,
                                  accumulate=int(t.accumulate_grad_batches), skip_batches=0,
                                  should_stop=lambda: False, max_steps=t.get("limit_train_batches"),
                                  progress=False, grad_clip_norm=None if t.get("grad_clip_norm") is None
                                  else float(t.grad_clip_norm))
            losses.append(res.loss)
            steps += res.steps
        loss = float(sum(losses) / len(losses)) if losses else math.nan
        self._optimizer_round = server_round
        return self.state(), {"train_loss": loss, "num-examples": float(self.n_train), "steps": float(steps),
                              "train_lr": float(optimizer.param_groups[0]["lr"])}

    def _local_optimizer(self, lr: float, server_round: int, keep: bool) -> torch.optim.Optimizer:
        """AdamW for this round: the previous round's, moments included, when ``keep`` and the
        site trained round ``server_round - 1`` in this process; a fresh one otherwise.

        A fresh AdamW starts from zero moments, and its bias-corrected first steps move every
        weight by about ``lr`` whatever its gradient's size; kept moments make a site's local steps
        those of one continuous AdamW, as in central training (with one site the rounds equal one
        central run, bit for bit: tests/unit/test_federated_baselines.py). On the demo the two gave
        the same Dice within run-to-run noise (spleen 0.32 vs 0.31 after 4 rounds, in-process). The
        moments never leave the site; a site whose process was restarted, or that missed a round,
        starts fresh moments.
        """
        if keep and self._optimizer is not None and self._optimizer_round == server_round - 1:
            for group in self._optimizer.param_groups:
                group["lr"] = group["initial_lr"] = lr  # the schedule below starts from the peak again
            return self._optimizer
        self._optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr,
                                            weight_decay=float(self.cfg.trainer.weight_decay))
        return self._optimizer

    def _schedule(self, server_round: int, epochs: int, total_epochs: int | None) -> Callable[[int], float]:
        """The LR factor of this round's optimizer steps: the trainer's schedule at the site's
        step count so far (a fresh optimizer each round, FedAvg's local SGD; not a fresh schedule)."""
        if total_epochs is None:
            return lambda _: 1.0
        t = self.cfg.trainer
        limit = t.get("limit_train_batches")
        per_epoch = math.ceil((len(self.train_loader) if limit is None else min(len(self.train_loader), int(limit)))
                              / int(t.accumulate_grad_batches))
        sched = t.get("scheduler") or {}
        factor = lr_lambda(str(sched.get("kind", "constant")), int(sched.get("warmup_epochs", 0)) * per_epoch,
                           total_epochs * per_epoch, float(sched.get("min_lr_factor", 0.0)))
        start = epoch_index(server_round, epochs, 0) * per_epoch
        return lambda step: factor(start + step)

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics of ``state`` on this site's held-out subjects (aggregates only)."""
        self.load(state)
        t = self.cfg.trainer
        metrics = validate(model=self.network, loader=self.val_loader, task=self.plan.task,
                           num_classes=self.plan.num_classes, names=self.plan.class_names, d=self.d,
                           roi_size=self.plan.preprocessing["roi_size"], sw_batch_size=int(t.sw_batch_size),
                           overlap=float(t.sw_overlap), amp=False, hd95=False, progress=False)
        return {**{k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                "num-examples": float(self.n_val)}

