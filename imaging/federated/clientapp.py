"""The Flower ClientApp that each hospital's SuperNode runs.

Three message types, each answered with aggregates only:

- ``query``: the site's plan summary (label names, network and preprocessing derived
  from the recipe, catalog hash and counts), so the coordinator can check that every
  site trains the same thing, without ever opening a site's data;
- ``train``: start from the global weights, train ``local-epochs`` with our engine,
  return the new weights and ``num-examples`` (FedAvg's weight); with ``evaluate-first``
  the received global weights are first evaluated on the validation split (record
  ``evaluate``), which spares the previous round an evaluate message of its own;
- ``evaluate``: the global weights' validation metrics on the site's held-out subjects.
"""

from __future__ import annotations

import hashlib
import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from imaging.federated.site import Site, SiteSettings, plan_summary, site_config

log = logging.getLogger(__name__)

app = ClientApp()

# One Site per (recipe, settings) in this process: a SuperNode may run several messages
# in one ClientApp process, and building loaders (reading the volumes) is the slow part.
_SITES: dict[str, Site] = {}


def _site(msg: Message, context: Context) -> Site:
    settings = SiteSettings.from_node_config(dict(context.node_config))
    recipe = str(msg.content.config_records["config"]["recipe"])
    key = hashlib.sha256(f"{recipe}\n{settings}".encode()).hexdigest()
    if key not in _SITES:
        _SITES.clear()
        _SITES[key] = Site(site_config(recipe, settings), settings)
    return _SITES[key]


@app.query()
def query(msg: Message, context: Context) -> Message:
    site = _site(msg, context)
    summary = {"site": site.settings.name, **plan_summary(site.plan)}
    return Message(RecordDict({"summary": ConfigRecord({"json": json.dumps(summary)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = _site(msg, context)
    cfg = msg.content.config_records["config"]
    state = msg.content.array_records["arrays"].to_torch_state_dict()
    records: dict[str, MetricRecord] = {}
    if bool(cfg.get("evaluate-first", False)):
        records["evaluate"] = MetricRecord(dict(site.evaluate(state)))  # type: ignore[arg-type]
    new_state, metrics = site.train(state, epochs=int(cfg["local-epochs"]), lr=float(cfg["lr"]),  # type: ignore[arg-type]
                                    proximal_mu=float(cfg.get("proximal-mu", 0.0)))  # type: ignore[arg-type]
    log.info("site %s: round %s trained, loss %.4f", site.settings.name, cfg.get("server-round"),
             metrics["train_loss"])
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=new_state),
                               "metrics": MetricRecord(dict(metrics)), **records}), reply_to=msg)  # type: ignore[arg-type]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = _site(msg, context)
    metrics = site.evaluate(msg.content.array_records["arrays"].to_torch_state_dict())
    return Message(RecordDict({"metrics": MetricRecord(dict(metrics))}), reply_to=msg)  # type: ignore[arg-type]
