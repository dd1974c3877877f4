"""Site-level central differential privacy: Flower's server-side fixed clipping, made to
add the noise it is configured for, and the privacy it spends.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` clips each site's update to norm
``C`` and adds Gaussian noise of std ``z * C / n`` to the aggregate, with ``n`` fixed when
the strategy is built. That is the Gaussian mechanism with noise multiplier ``z`` only if

- the aggregate is the *unweighted* mean of the updates: FedAvg weighted by
  ``num-examples`` scales a large site's update up (weight ``w > 1/n``), so its noise,
  relative to its influence, falls to ``z / (n w)`` (sites of 400/50/50 cases at z = 1:
  0.42 for the largest);
- ``n`` is the number of updates actually averaged: with fewer sites answering, the mean
  divides by fewer and each site's influence grows while the noise does not.

:class:`SiteLevelDP` gives every site the same weight and divides the noise by the round's
own count, and reports per round what it did: sites sampled and aggregated, the noise
std, and epsilon for ``delta`` after the rounds released so far.

Epsilon comes from the Renyi-DP accountant of the Gaussian mechanism (Mironov 2017), written
here because Flower's own ``RdpAccountant`` needs Google's ``dp-accounting`` (Flower's
``dp`` extra), which this project does not install; it is a dozen lines and is checked
against the exact privacy curve of the Gaussian mechanism (Balle & Wang 2018) in the tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

# The Renyi orders dp-accounting (and Opacus) evaluate by default.
ORDERS: tuple[float, ...] = (*(1 + x / 10.0 for x in range(1, 100)), *map(float, range(11, 64)),
                             128.0, 256.0, 512.0)
WEIGHT_KEY = "num-examples"


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``releases`` Gaussian mechanisms of ``noise_multiplier``
    (noise std / sensitivity), every site in every release (no sampling amplification claimed).

    RDP of one release at order ``a`` is ``a / (2 z^2)`` (Mironov 2017, Prop. 7); releases add.
    The conversion to (epsilon, delta) is Canonne-Kamath-Steinke 2020 / Balle et al. 2020
    (Thm 21), the one dp-accounting and Opacus use: tighter than ``rdp + log(1/delta)/(a-1)``.

    Raises:
        ValueError: ``noise_multiplier <= 0`` or ``delta`` outside (0, 1).
    """
    if noise_multiplier <= 0 or not 0 < delta < 1:
        raise ValueError(f"noise_multiplier={noise_multiplier} must be > 0 and delta={delta} in (0, 1)")
    if releases <= 0:
        return 0.0
    best = math.inf
    for a in ORDERS:
        rdp = releases * a / (2 * noise_multiplier**2)
        best = min(best, rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return max(best, 0.0)


class SiteLevelDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping over equal site weights and the round's own count.

    ``last`` holds the round's privacy figures after :meth:`aggregate_train`:
    ``dp_sites_sampled``, ``dp_sites_aggregated``, ``dp_noise_std``, ``dp_epsilon``,
    ``dp_delta``. Epsilon is a function of the rounds released, so a resumed coordinator
    (a new strategy) reports the same figure as one that never stopped.
    """

    def __init__(self, strategy: Strategy, *, noise_multiplier: float, clipping_norm: float, n_sites: int,
                 delta: float) -> None:
        super().__init__(strategy, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
                         num_sampled_clients=n_sites)
        gaussian_epsilon(noise_multiplier, 1, delta)  # validate the settings now, not after round 1
        self.delta = delta
        self.sampled: dict[int, int] = {}
        self.last: dict[str, float] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled[server_round] = len(messages)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        answered = [_equal_weight(r) for r in replies if not r.has_error()]
        if not answered:
            return None, None
        # The mean divides by the updates it averages: the noise must too (see module doc).
        self.num_sampled_clients = len(answered)
        arrays, metrics = super().aggregate_train(server_round, answered)
        if arrays is not None:
            self.last = {"dp_sites_sampled": float(self.sampled.get(server_round, len(answered))),
                         "dp_sites_aggregated": float(len(answered)),
                         "dp_noise_std": self.noise_multiplier * self.clipping_norm / len(answered),
                         "dp_epsilon": gaussian_epsilon(self.noise_multiplier, server_round, self.delta),
                         "dp_delta": self.delta}
        return arrays, metrics


def _equal_weight(reply: Message) -> Message:
    """The reply as the aggregation sees it: weight 1 instead of the site's case count
    (a copy: the coordinator still reads the site's own metrics from the original)."""
    content = reply.content
    records: dict[str, Any] = {}
    for name, rec in content.items():
        if isinstance(rec, MetricRecord):
            rec = MetricRecord({**dict(rec), WEIGHT_KEY: 1.0})
        records[name] = rec
    shaped = copy.copy(reply)
    shaped.content = RecordDict(records)
    return shaped
