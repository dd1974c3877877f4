"""The coordinator's round loop, run inside Flower's ServerApp.

Flower does the wire protocol, node sampling, minimum-node rules and aggregation
(:mod:`imaging.federated.strategy`); this loop adds what a hospital federation needs
around it: a check that every site trains the same thing (``query`` round), one MLflow
run with global and per-site metrics, a checkpoint after every round (global weights +
round number, so a stopped coordinator resumes at the next round in the same MLflow
run), a record of sites lost or back, and the final model registered like a centrally
trained one. It never sees a site's data: only what the ClientApp returns.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from imaging.errors import UsageError
from imaging.federated.aggregate import aggregate_site_metrics
from imaging.federated.strategy import build_strategy
from imaging.fsutil import atomic_write_json
from imaging.models.registry import build_network

log = logging.getLogger(__name__)

CHECKPOINT = "global.pt"
SUMMARY = "federation.json"
# What a site must agree on with the others (derived from the one recipe and its labels).
MUST_AGREE = ("task", "class_names", "network_config")
# Error replies that mean "nobody is there", not "the site refused": Flower answers for a node whose
# heartbeat stopped, or whose reply expired.
GONE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE)


@dataclass
class RoundRecord:
    round: int
    sites_trained: list[str]
    sites_failed: list[str]
    train: dict[str, float]
    evaluate: dict[str, float]
    per_site: dict[str, dict[str, float]]
    seconds: float
    # What crossed the wire from each site: record names, their types and sizes.
    received: list[dict[str, Any]] = field(default_factory=list)
    # With differential privacy: sites sampled/aggregated, noise std, epsilon at delta.
    privacy: dict[str, float] = field(default_factory=dict)


@dataclass
class FederationResult:
    run_id: str | None
    rounds_done: int
    sites: dict[str, dict[str, Any]]
    history: list[RoundRecord] = field(default_factory=list)
    best_round: int = 0
    best_metric: float = math.nan
    registered: dict[str, Any] = field(default_factory=dict)


def recipe_yaml(cfg: DictConfig) -> str:
    """The part of the config every site trains with: data/model/trainer, no paths."""
    keep = OmegaConf.create({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "trainer")})
    keep.data.dataset_dir = None
    keep.data.cache_dir = None
    return OmegaConf.to_yaml(keep)


def _gather_sites(grid: Grid, recipe: str, n: int, connect_timeout_s: float,
                  timeout_s: float) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """The plan summaries of ``n`` answering sites, or of those that answered within
    ``connect_timeout_s`` (nodes the SuperLink lists but that do not answer do not count),
    and the nodes asked."""
    deadline = time.monotonic() + connect_timeout_s
    summaries: dict[int, dict[str, Any]] = {}
    asked: set[int] = set()
    while True:
        new = sorted(set(grid.get_node_ids()) - asked)
        if new:
            asked.update(new)
            summaries.update(query_sites(grid, recipe, new, timeout_s,
                                         next(iter(summaries.values())) if summaries else None, empty_ok=True))
        if len(summaries) >= n or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not summaries:
        raise UsageError(f"no site answered within federation.connect_timeout_s={connect_timeout_s:g}")
    return summaries, asked


def query_sites(grid: Grid, recipe: str, node_ids: Iterable[int], timeout_s: float,
                reference: dict[str, Any] | None = None, empty_ok: bool = False) -> dict[int, dict[str, Any]]:
    """Ask every connected site for its plan summary; refuse sites that disagree.

    Raises:
        UsageError: a site failed to build its plan (its error text is a config error on
            that site), or sites disagree on labels, task or network.
    """
    messages = [Message(RecordDict({"config": ConfigRecord({"recipe": recipe})}), dst_node_id=nid,
                        message_type=MessageType.QUERY) for nid in node_ids]
    summaries: dict[int, dict[str, Any]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error() and reply.error.code in GONE:
            # A node the SuperLink still lists but that stopped answering (a site that went
            # away, or a node left over in a restarted SuperLink's database): not a config error.
            log.warning("a node listed by the SuperLink did not answer the query (%s): leaving it out",
                        reply.error.reason)
            continue
        if reply.has_error():
            raise UsageError(f"a site could not prepare its data (node {reply.metadata.src_node_id}): "
                             f"{reply.error.reason}")
        summaries[reply.metadata.src_node_id] = json.loads(str(reply.content["summary"]["json"]))
    if not summaries and not empty_ok:
        raise UsageError("no site answered the query round")
    if not summaries:
        return summaries
    first = reference or next(iter(summaries.values()))
    for s in summaries.values():
        for key in MUST_AGREE:
            if s[key] != first[key]:
                raise UsageError(f"site '{s['site']}' disagrees with site '{first['site']}' on {key}: "
                                 f"{s[key]} vs {first[key]}")
    return summaries


def _site_of(reply: Message, names: dict[int, str]) -> str:
    return names.get(reply.metadata.src_node_id, f"node-{reply.metadata.src_node_id}")


def received(reply: Message, site: str) -> dict[str, Any]:
    """What a reply carried: record names -> type and size (bytes for arrays, keys otherwise)."""
    out: dict[str, Any] = {"site": site, "records": {}}
    for name, rec in reply.content.items():
        kind = type(rec).__name__
        out["records"][name] = {"type": kind, "bytes": rec.count_bytes()} if kind == "ArrayRecord" else {
            "type": kind, "keys": sorted(rec.keys())}
    return out


def _rejoin(grid: Grid, names: dict[int, str], recipe: str, reference: dict[str, Any], timeout_s: float,
            asked: set[int]) -> None:
    """Sites that connected since the last round (a hospital back online): ask who they are.
    ``asked``: nodes already queried (a node that did not answer is not asked every round)."""
    new = [nid for nid in grid.get_node_ids() if nid not in names and nid not in asked]
    asked.update(new)
    if new:
        for nid, s in query_sites(grid, recipe, new, timeout_s, reference, empty_ok=True).items():
            names[nid] = s["site"]
            log.info("site %s joined (node %d)", s["site"], nid)


def split_evaluations(replies: list[Message]) -> list[Message]:
    """Train replies that also carry the previous global model's evaluation (record
    ``evaluate``): each reply keeps its ``arrays`` and ``metrics`` for the strategy's
    ``aggregate_train`` (which wants one MetricRecord), and the evaluations come back as
    evaluate-shaped replies (content replaced) for ``aggregate_evaluate``."""
    evals = []
    for r in replies:
        content = r.content
        if "evaluate" not in content:
            continue
        ev = content["evaluate"]
        r.content = RecordDict({k: v for k, v in content.items() if k != "evaluate"})
        shaped = copy.copy(r)  # same metadata (site, round), its own content
        shaped.content = RecordDict({"metrics": ev})
        evals.append(shaped)
    return evals


def _metrics_of(reply: Message) -> dict[str, float]:
    rec = next(iter(reply.content.metric_records.values()))
    return {k: float(v) for k, v in rec.items() if isinstance(v, int | float)}


def initial_network(network_config: dict[str, Any], seed: int) -> torch.nn.Module:
    """The federation's round-0 weights: drawn under ``trainer.seed``, as central training's
    and each site's :class:`~imaging.federated.site.Site` (and so the same-budget baselines')
    are, so a federation is reproducible and starts where its baselines start. (Unseeded, the
    demo's spleen stayed at Dice 0 from some starting points and not others.)"""
    torch.manual_seed(seed)
    return build_network(network_config)


def _checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def _save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    path = run_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a coordinator killed mid-write keeps the previous round


def run_federation(grid: Grid, cfg: DictConfig, tracker: Any | None = None) -> FederationResult:
    """Run ``federation.rounds`` rounds (resuming from the last checkpoint); see module doc.

    Args:
        grid: Flower's Grid (the ServerApp's handle on the SuperLink).
        cfg: the composed ``federate`` config.
        tracker: an :class:`imaging.tracking.federation.FederationTracker` or ``None``.
    """
    raw = OmegaConf.to_container(cfg.federation, resolve=True)
    assert isinstance(raw, dict)
    fed: dict[str, Any] = {str(k): v for k, v in raw.items()}
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    n_sites = len(fed["sites"])
    timeout = float(fed["round_timeout_s"])
    recipe = recipe_yaml(cfg)
    summaries, asked = _gather_sites(grid, recipe, n_sites, float(fed["connect_timeout_s"]), timeout)
    names = {nid: s["site"] for nid, s in summaries.items()}
    log.info("federation of %d site(s): %s", len(names), ", ".join(sorted(names.values())))
    first = next(iter(summaries.values()))
    network = initial_network(first["network_config"], int(cfg.trainer.seed))
    strategy = build_strategy(fed, n_sites)
    monitor = "dice_mean" if first["task"] == "segmentation" else "auc"

    payload = _checkpoint(run_dir)
    if payload is not None and payload.get("recipe") != recipe:
        raise UsageError(f"run_dir '{run_dir}' holds a federation with another recipe: choose another "
                         "tracking.run_name, or delete it to start over")
    if payload is not None:
        network.load_state_dict(payload["state"])
        log.info("resuming the federation after round %d", payload["round"])
    result = FederationResult(run_id=payload.get("run_id") if payload else None,
                              rounds_done=payload["round"] if payload else 0,
                              sites={s["site"]: {k: s[k] for k in ("catalog_sha256", "n_cases", "n_subjects")}
                                     for s in summaries.values()},
                              history=[RoundRecord(**h) for h in payload.get("history", [])] if payload else [],
                              best_round=payload.get("best_round", 0) if payload else 0,
                              best_metric=payload.get("best_metric", math.nan) if payload else math.nan)
    best_state = payload.get("best_state") if payload else None
    if tracker is not None:
        result.run_id = tracker.start(result.run_id, cfg, result.sites)
    arrays = ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in network.state_dict().items()})
    # Sites run trainer.scheduler per step over rounds x local epochs, from the peak lr (each
    # site counts its own steps per epoch): the schedule of a central run of that many epochs.
    train_cfg: dict[str, Any] = {"recipe": recipe, "local-epochs": int(fed["local_epochs"]),
                                 "lr": float(cfg.trainer.lr),
                                 "total-epochs": int(fed["rounds"]) * int(fed["local_epochs"]),
                                 "local-optimizer": str(fed.get("local_optimizer", "fresh"))}
    # The round whose global model still awaits its evaluation: sites evaluate it at the
    # start of the next round's train message (one ClientApp process per site and round,
    # not two: Flower starts a process per message, and importing torch+MONAI in it costs
    # more than the evaluation itself), the last round by an evaluate message of its own.
    pending = result.history[-1] if payload is not None and payload.get("pending_eval") and result.history else None
    pending_state = payload["state"] if pending is not None and payload is not None else None

    def complete(rec: RoundRecord, state: dict[str, torch.Tensor], evals: list[Message]) -> None:
        nonlocal best_state
        for r in evals:
            rec.per_site.setdefault(_site_of(r, names), {}).update(
                {f"val_{k}": v for k, v in _metrics_of(r).items()})
        # Per metric over the sites that have it, NaN-aware (imaging.federated.aggregate), not
        # Flower's weighted sum over every site.
        rec.evaluate = aggregate_site_metrics([_metrics_of(r) for r in evals]) if evals else {}
        value = rec.evaluate.get(monitor, math.nan)
        if not math.isnan(value) and (result.best_round == 0 or value > result.best_metric):
            result.best_round, result.best_metric, best_state = rec.round, value, state
        log.info("round %d/%d: %s=%.4f (sites %s%s)", rec.round, fed["rounds"], monitor, value,
                 ", ".join(rec.sites_trained), f"; lost {', '.join(rec.sites_failed)}" if rec.sites_failed else "")

    def save(rnd: int, state: dict[str, torch.Tensor], pending_eval: bool) -> None:
        _save_checkpoint(run_dir, {"round": rnd, "state": state, "recipe": recipe, "run_id": result.run_id,
                                   "history": [asdict(h) for h in result.history], "best_round": result.best_round,
                                   "best_metric": result.best_metric, "best_state": best_state,
                                   "pending_eval": pending_eval})

    for rnd in range(result.rounds_done + 1, int(fed["rounds"]) + 1):
        start = time.perf_counter()
        _rejoin(grid, names, recipe, first, timeout, asked)
        config = ConfigRecord({**train_cfg, "evaluate-first": pending is not None})
        messages = list(strategy.configure_train(rnd, arrays, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        wire = [received(r, _site_of(r, names)) for r in ok]
        evals = split_evaluations(ok)
        trained = sorted(_site_of(r, names) for r in ok)
        # Lost: every site of the federation that returned no update this round (its node
        # timed out, failed, or is gone from the SuperLink).
        failed = sorted(set(names.values()) - set(trained))
        if failed:
            log.warning("round %d: site(s) %s did not return an update; aggregating the other %d",
                        rnd, ", ".join(failed), len(ok))
        new_arrays, train_metrics = strategy.aggregate_train(rnd, ok)
        if new_arrays is None:
            raise RuntimeError(f"round {rnd}: no site returned an update (failed: {failed})")
        arrays = new_arrays
        done_before = pending
        if pending is not None and pending_state is not None:
            complete(pending, pending_state, evals)
        per_site: dict[str, dict[str, float]] = {}
        for r in ok:
            per_site.setdefault(_site_of(r, names), {}).update(
                {f"train_{k}" if not k.startswith("train_") else k: v for k, v in _metrics_of(r).items()})
        rec = RoundRecord(rnd, trained, failed, {k: float(v) for k, v in (train_metrics or {}).items()
                                                 if isinstance(v, int | float)}, {}, per_site,
                          round(time.perf_counter() - start, 2), wire,
                          dict(getattr(strategy, "last", {})))
        result.history.append(rec)
        pending, pending_state = rec, arrays.to_torch_state_dict()
        result.rounds_done = rnd
        save(rnd, pending_state, pending_eval=True)
        if tracker is not None and done_before is not None:
            tracker.log_round(done_before, monitor, result.best_metric)
    if pending is not None and pending_state is not None:
        # The last round's global model: one evaluate message per site.
        ev_replies = list(grid.send_and_receive(
            strategy.configure_evaluate(pending.round, arrays, ConfigRecord({"recipe": recipe}), grid),
            timeout=timeout))
        ev_ok = [r for r in ev_replies if not r.has_error()]
        pending.received.extend(received(r, _site_of(r, names)) for r in ev_ok)
        complete(pending, pending_state, ev_ok)
        save(pending.round, pending_state, pending_eval=False)
        if tracker is not None:
            tracker.log_round(pending, monitor, result.best_metric)
    final = best_state if best_state is not None else arrays.to_torch_state_dict()
    network.load_state_dict(final)
    if tracker is not None:
        best = next((h for h in result.history if h.round == result.best_round), None)
        result.registered = tracker.finish(network, first, best.evaluate if best else {}, result)
    atomic_write_json(run_dir / SUMMARY, {**asdict(result), "history": [asdict(h) for h in result.history]})
    return result
