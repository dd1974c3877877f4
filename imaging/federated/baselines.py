"""Same-budget baselines of a local federation: is the federated model as good as one
trained on the pooled data, and better than each site alone? (Issue 16's promise, issue 29.)

Only where every site is a folder on this machine (the demo, a simulation of a planned
federation): a real federation cannot pool its data, which is its reason to exist. After
the federation, from the same initial weights (``trainer.seed``), with the same engine,
recipe, loss, augmentation and learning-rate schedule:

- ``pooled``: one central model on the union of the sites' training splits for
  ``rounds x local_epochs`` epochs; each epoch visits every site's cases, so it takes as
  many optimizer steps as all sites together in the federation (the same compute);
- ``single``: each site alone on its own training split for ``rounds x local_epochs``
  epochs (the steps that site took in the federation).

Every model, the federated one included (its last round and the round it registered), is
scored by the same code, :meth:`imaging.federated.site.Site.evaluate`, on every site's
held-out split (the federation's own validation subjects, which no model trained on); the
figure per label is the sites' mean weighted by their cases, NaN-aware
(:func:`imaging.federated.aggregate.aggregate_site_metrics`), as the federation's global metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imaging.errors import UsageError
from imaging.federated.aggregate import aggregate_site_metrics
from imaging.federated.site import Site, SiteSettings, site_config

log = logging.getLogger(__name__)

KINDS = ("pooled", "single")


@dataclass
class Scored:
    """One model's held-out figures: over all sites (``metrics``) and per site."""

    name: str
    metrics: dict[str, float]
    per_site: dict[str, dict[str, float]]
    steps: int | None = None  # optimizer steps it trained, over all sites


def check_kinds(kinds: list[str]) -> list[str]:
    """``federation.baselines`` as a list of known kinds.

    Raises:
        UsageError: an unknown kind.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UsageError(f"federation.baselines={kinds}: unknown {bad}; choose from {list(KINDS)}")
    return list(dict.fromkeys(kinds))


def _score(name: str, state: dict[str, torch.Tensor], sites: Mapping[str, Site], steps: int | None) -> Scored:
    per_site = {s: site.evaluate(state) for s, site in sites.items()}
    return Scored(name, aggregate_site_metrics(list(per_site.values())), per_site, steps)


def run_baselines(recipe: str, datasets: Mapping[str, Path], work_dir: Path, *, epochs: int, lr: float,
                  kinds: list[str], federated: Mapping[str, dict[str, torch.Tensor]],
                  federated_steps: int | None = None) -> list[Scored]:
    """Score the ``federated`` states and train + score the ``kinds`` baselines (module doc).

    Args:
        recipe: the federation's recipe (``imaging.federated.coordinator.recipe_yaml``).
        datasets: site -> its dataset folder.
        work_dir: scratch folder (one sub-folder per site, as a SuperNode's work dir).
        epochs: ``rounds x local_epochs``: every baseline's epochs.
        lr: the peak learning rate (``trainer.lr``), scheduled as each site's in the federation.
        kinds: of :data:`KINDS`.
        federated: name -> the federated model's weights to score (e.g. last and best round).
        federated_steps: the optimizer steps the federation's sites took, all together.

    Raises:
        UsageError: ``pooled`` over sites whose preprocessing (label numbering) differs.
    """
    def build(settings: SiteSettings, train_items: list[dict[str, Any]] | None = None) -> Site:
        return Site(site_config(recipe, settings), settings, train_items=train_items)

    sites = {name: build(SiteSettings(name, Path(ds), work_dir / name)) for name, ds in datasets.items()}
    first = next(iter(sites))
    init = sites[first].state()  # Site seeds torch with trainer.seed before building its network
    scored = [_score(name, state, sites, federated_steps) for name, state in federated.items()]
    if "pooled" in kinds:
        pres = {s: site.plan.preprocessing for s, site in sites.items()}
        if any(p != pres[first] for p in pres.values()):
            raise UsageError("federation.baselines=[pooled]: the sites' preprocessing differs (label numbering "
                             "or intensity), so one model cannot train on their union; drop `pooled`")
        items = [item for site in sites.values() for item in site.train_items]
        pooled = build(SiteSettings("pooled", Path(datasets[first]), work_dir / "pooled"), items)
        log.info("baseline pooled: %d training cases of %d sites, %d epochs", len(items), len(sites), epochs)
        state, m = pooled.train(init, epochs=epochs, lr=lr, server_round=1, total_epochs=epochs)
        scored.append(_score("pooled", state, sites, int(m["steps"])))
        del pooled
    if "single" in kinds:
        for name, site in sites.items():
            log.info("baseline single %s: %d training cases, %d epochs", name, site.n_train, epochs)
            state, m = site.train(init, epochs=epochs, lr=lr, server_round=1, total_epochs=epochs)
            scored.append(_score(f"single_{name}", state, sites, int(m["steps"])))
    return scored


def ratios(scored: list[Scored], of: str, to: str) -> dict[str, float]:
    """``of``'s figure / ``to``'s, per ``dice_*`` (or ``auc``) metric both have (NaN where undefined)."""
    a = next(s for s in scored if s.name == of).metrics
    b = next(s for s in scored if s.name == to).metrics
    keys = [k for k in a if (k.startswith("dice_") or k == "auc") and k in b]
    return {k: (a[k] / b[k] if b[k] and math.isfinite(a[k]) and math.isfinite(b[k]) else math.nan) for k in keys}
