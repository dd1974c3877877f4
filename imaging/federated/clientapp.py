"""The Flower ClientApp that each hospital's SuperNode runs.

Three message types, each answered with aggregates only:

- ``query``: the site's plan summary (label names, network and preprocessing derived
  from the recipe, catalog hash and counts), so the coordinator can check that every
  site trains the same thing, without ever opening a site's data;
- ``train``: start from the global weights, train ``local-epochs`` with our engine,
  return the new weights and ``num-examples`` (FedAvg's weight); with ``evaluate-first``
  the received global weights are first evaluated on the validation split (record
  ``evaluate``), which spares the previous round an evaluate message of its own;
- ``evaluate``: the global weights' validation metrics on the site's held-out subjects;
- ``evaluate.model`` (``imaging evaluate``, issue 31): a registered model's weights and
  bundle config; the site's Dice/HD95/volume aggregates (:mod:`imaging.federated.evaluation`).

The SuperNode starts this app in a new process for every message, so the work runs in
the site's warm worker (:mod:`imaging.federated.worker`: torch, MONAI and the loaded
volumes kept between messages) and this module imports neither torch nor MONAI. With
``--node-config 'worker="false"'`` the work runs here, in the message's own process;
``worker-idle-s=600`` ends an idle worker sooner than the default 30 minutes (it holds the
model, the loaded volumes and, on a GPU, their device memory).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

log = logging.getLogger(__name__)

app = ClientApp()


def _run(op: str, msg: Message, context: Context, **payload: Any) -> Any:
    node_config = {str(k): v for k, v in context.node_config.items()}
    payload["recipe"] = str(msg.content.config_records["config"]["recipe"])
    payload["node_config"] = node_config
    work_dir = str(node_config.get("work-dir", "")).strip()
    if work_dir and str(node_config.get("worker", "true")).lower() not in ("false", "0", "no"):
        from imaging.federated.worker import IDLE_S, call

        return call(Path(work_dir), os.getppid(), op, payload,
                    idle_s=float(node_config.get("worker-idle-s", IDLE_S)))  # type: ignore[arg-type]
    from imaging.federated.worker import in_process

    return in_process(op, payload)


def _state(msg: Message) -> dict[str, Any]:
    return {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}


@app.query()
def query(msg: Message, context: Context) -> Message:
    import json

    summary = _run("query", msg, context)
    return Message(RecordDict({"summary": ConfigRecord({"json": json.dumps(summary)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records["config"]
    out = _run("train", msg, context, state=_state(msg), epochs=int(cfg["local-epochs"]),  # type: ignore[arg-type]
               lr=float(cfg["lr"]), proximal_mu=float(cfg.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
               evaluate_first=bool(cfg.get("evaluate-first", False)),
               # Flower's configure_train puts the round in every train message's config.
               server_round=int(cfg.get("server-round", 1)),  # type: ignore[arg-type]
               total_epochs=int(cfg["total-epochs"]) if "total-epochs" in cfg else None,  # type: ignore[arg-type]
               keep_optimizer=str(cfg.get("local-optimizer", "fresh")) == "keep")
    log.info("round %s trained, loss %.4f", cfg.get("server-round"), out["metrics"]["train_loss"])
    records: dict[str, ArrayRecord | MetricRecord] = {
        "arrays": ArrayRecord(array_dict={k: Array(ndarray=v) for k, v in out["state"].items()}),
        "metrics": MetricRecord(dict(out["metrics"]))}
    if out["evaluate"] is not None:
        records["evaluate"] = MetricRecord(dict(out["evaluate"]))
    return Message(RecordDict(records), reply_to=msg)  # type: ignore[arg-type]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = _run("evaluate", msg, context, state=_state(msg))
    return Message(RecordDict({"metrics": MetricRecord(dict(metrics))}), reply_to=msg)


@app.evaluate("model")
def evaluate_model(msg: Message, context: Context) -> Message:
    """Cross-site evaluation of a registered model (issue 31, :mod:`imaging.federated.evaluation`):
    the model's weights and bundle config in, the site's aggregate figures out."""
    node_config = {str(k): v for k, v in context.node_config.items()}
    payload = {"state": _state(msg), "request": str(msg.content.config_records["request"]["json"]),
               "node_config": node_config}
    work_dir = str(node_config.get("work-dir", "")).strip()
    if work_dir and str(node_config.get("worker", "true")).lower() not in ("false", "0", "no"):
        from imaging.federated.worker import IDLE_S, call

        out = call(Path(work_dir), os.getppid(), "evaluate_model", payload,
                   idle_s=float(node_config.get("worker-idle-s", IDLE_S)))  # type: ignore[arg-type]
    else:
        from imaging.federated.worker import in_process

        out = in_process("evaluate_model", payload)
    return Message(RecordDict({"metrics": MetricRecord(dict(out["metrics"])),
                               "site": ConfigRecord({"name": out["site"], "catalog_sha256": out["catalog_sha256"]})}),
                   reply_to=msg)
