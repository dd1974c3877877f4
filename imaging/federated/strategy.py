"""Flower strategies from the ``federation`` config group.

Aggregation, sampling, minimum-node rules and differential privacy are Flower's own
(``flwr.serverapp.strategy``): we only choose and configure them.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from imaging.errors import UsageError
from imaging.federated.privacy import SiteLevelDP

AGGREGATIONS = ("fedavg", "fedprox")
DP_MODES = ("none", "server_fixed_clipping")


def build_strategy(fed: dict[str, Any], n_sites: int) -> Strategy:
    """FedAvg or FedProx with the federation's minimum-site rules, optionally wrapped in
    Flower's central differential privacy (server-side fixed clipping) over equal site
    weights (:class:`imaging.federated.privacy.SiteLevelDP`).

    Raises:
        UsageError: an unknown ``federation.strategy`` or ``federation.dp.mode``, or
            ``federation.min_sites`` larger than the number of sites.
    """
    name = str(fed.get("strategy", "fedavg"))
    if name not in AGGREGATIONS:
        raise UsageError(f"federation.strategy='{name}': not one of {list(AGGREGATIONS)}")
    min_sites = int(fed.get("min_sites") or n_sites)
    if not 1 <= min_sites <= n_sites:
        raise UsageError(f"federation.min_sites={min_sites}: must be between 1 and the {n_sites} site(s)")
    common: dict[str, Any] = {"min_train_nodes": min_sites, "min_evaluate_nodes": min_sites,
                              "min_available_nodes": min_sites, "weighted_by_key": "num-examples"}
    strategy: Strategy = (FedProx(proximal_mu=float(fed.get("proximal_mu", 0.01)), **common) if name == "fedprox"
                          else FedAvg(**common))
    dp = dict(fed.get("dp") or {})
    mode = str(dp.get("mode", "none"))
    if mode not in DP_MODES:
        raise UsageError(f"federation.dp.mode='{mode}': not one of {list(DP_MODES)}")
    if mode == "server_fixed_clipping":
        # Clips each site's update to clipping_norm, averages them with equal weights, then
        # adds Gaussian noise of std noise_multiplier * clipping_norm / sites aggregated.
        try:
            strategy = SiteLevelDP(strategy, noise_multiplier=float(dp.get("noise_multiplier", 1.0)),
                                   clipping_norm=float(dp.get("clipping_norm", 1.0)), n_sites=n_sites,
                                   delta=float(dp.get("delta", 1e-5)))
        except ValueError as exc:
            raise UsageError(f"federation.dp: {exc}") from exc
    return strategy
