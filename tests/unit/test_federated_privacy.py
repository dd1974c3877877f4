"""Differential privacy does what it is configured for: each site's update meets noise of
``noise_multiplier`` times its own influence on the aggregate, whatever the sites' sizes
and however many answer, measured by aggregating fixed updates many times through
Flower's own clipping and noise; epsilon is an upper bound close to the exact privacy
curve of the Gaussian mechanism (Balle & Wang 2018, computed here with scipy)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity
from scipy.optimize import brentq
from scipy.stats import norm

from imaging.errors import UsageError
from imaging.federated.privacy import SiteLevelDP, gaussian_epsilon
from imaging.federated.strategy import build_strategy

Z, CLIP = 1.0, 2.0
NOISE_ONLY = 1_000  # coordinates no site updates: they carry the noise alone
ROUNDS = 600


@pytest.fixture
def in_a_run() -> Iterator[None]:
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class Grid:
    """What Flower's FedAvg.configure_train asks of a Grid: the connected node ids."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def _reply(site: int, n_sites: int, cases: int) -> Message:
    # Site i moves coordinate i only, by 10 clipping norms: clipped to exactly CLIP.
    w = torch.zeros(n_sites + NOISE_ONLY, dtype=torch.float64)
    w[site] = 10 * CLIP
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict={"w": w}),
                               "metrics": MetricRecord({"num-examples": cases, "train_loss": 1.0})}),
                   dst_node_id=site + 1, message_type=MessageType.TRAIN)


def _measure(strategy: Strategy, cases: list[int], answering: list[int],
             n_sites: int) -> tuple[np.ndarray, float]:
    """Each answering site's effective noise multiplier (noise std / its influence), and the noise std."""
    np.random.seed(0)  # Flower draws its noise from NumPy's global generator: a repeatable measurement
    zero = ArrayRecord(torch_state_dict={"w": torch.zeros(n_sites + NOISE_ONLY, dtype=torch.float64)})
    moved, noise = [], []
    for rnd in range(1, ROUNDS + 1):
        list(strategy.configure_train(rnd, zero, ConfigRecord({}), Grid(n_sites)))  # type: ignore[arg-type]
        arrays, _ = strategy.aggregate_train(rnd, [_reply(i, n_sites, cases[i]) for i in answering])
        assert arrays is not None
        w = arrays.to_torch_state_dict()["w"].numpy()
        moved.append(w[answering])
        noise.append(w[n_sites:])
    std = float(np.std(noise))
    influence = np.mean(moved, axis=0)  # the site's weight times its clipped update, the noise averaged out
    return std / influence, std


def test_each_site_gets_the_configured_noise_whatever_its_size(in_a_run: None) -> None:
    strategy = build_strategy({"strategy": "fedavg", "dp": {"mode": "server_fixed_clipping", "noise_multiplier": Z,
                                                            "clipping_norm": CLIP}}, 3)
    assert isinstance(strategy, SiteLevelDP)
    effective, std = _measure(strategy, [400, 50, 50], [0, 1, 2], 3)
    # Flower weighted by cases gave the 400-case site 0.42 and the others 3.3.
    assert effective == pytest.approx([Z] * 3, rel=0.12)
    assert std == pytest.approx(Z * CLIP / 3, rel=0.02)
    assert strategy.last["dp_noise_std"] == pytest.approx(Z * CLIP / 3)
    assert (strategy.last["dp_sites_sampled"], strategy.last["dp_sites_aggregated"]) == (3, 3)


def test_a_site_that_does_not_answer_does_not_thin_the_others_noise(in_a_run: None) -> None:
    strategy = build_strategy({"strategy": "fedavg", "dp": {"mode": "server_fixed_clipping", "noise_multiplier": Z,
                                                            "clipping_norm": CLIP}}, 3)
    effective, std = _measure(strategy, [50, 50, 50], [0, 2], 3)
    # Three sampled, two averaged: noise std over 3 gave each of them 0.67.
    assert effective == pytest.approx([Z] * 2, rel=0.12)
    assert std == pytest.approx(Z * CLIP / 2, rel=0.02)
    assert isinstance(strategy, SiteLevelDP)
    assert (strategy.last["dp_sites_sampled"], strategy.last["dp_sites_aggregated"]) == (3, 2)
    assert strategy.last["dp_epsilon"] == pytest.approx(gaussian_epsilon(Z, ROUNDS, 1e-5))


def _exact_epsilon(z: float, releases: int, delta: float) -> float:
    """The exact (epsilon, delta) curve of the Gaussian mechanism (Balle & Wang 2018, Thm 8):
    ``releases`` compositions of noise multiplier z are one of z / sqrt(releases)."""
    mu = math.sqrt(releases) / z
    return float(brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta,
                        0.0, 500.0))


@pytest.mark.parametrize(("z", "releases", "delta"), [(1.0, 1, 1e-5), (1.0, 8, 1e-5), (2.0, 8, 1e-5),
                                                      (0.5, 10, 1e-6), (1.1, 100, 1e-5), (5.0, 1, 1e-5)])
def test_epsilon_bounds_the_exact_gaussian_curve_closely(z: float, releases: int, delta: float) -> None:
    exact = _exact_epsilon(z, releases, delta)
    assert exact <= gaussian_epsilon(z, releases, delta) <= 1.12 * exact


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(1.0, 4, 1e-5) < gaussian_epsilon(1.0, 8, 1e-5)
    assert gaussian_epsilon(2.0, 8, 1e-5) < gaussian_epsilon(1.0, 8, 1e-5)


def test_bad_dp_settings_name_the_key() -> None:
    with pytest.raises(UsageError, match="federation.dp.*delta=2"):
        build_strategy({"strategy": "fedavg", "dp": {"mode": "server_fixed_clipping", "delta": 2}}, 3)
