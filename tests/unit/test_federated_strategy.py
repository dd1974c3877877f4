"""The federation's strategy comes from config and Flower applies it: FedAvg weights by
``num-examples``; the DP wrapper really clips each site's update and adds noise of the
documented size (Flower's own aggregation code, run on replies as a SuperLink delivers them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx
from flwr.supercore.task_identity import TaskIdentity

from imaging.errors import UsageError
from imaging.federated.processes import _node_config
from imaging.federated.site import SiteSettings
from imaging.federated.strategy import build_strategy

N = 20_000


@pytest.fixture
def in_a_run() -> Iterator[None]:
    # Messages carry their run's identity; a ServerApp process has it set by Flower.
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _reply(value: float | np.ndarray, n: int) -> Message:
    w = torch.as_tensor(np.broadcast_to(value, (N,)).copy(), dtype=torch.float32)
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict={"w": w}),
                               "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})}),
                   dst_node_id=1, message_type=MessageType.TRAIN)


def _w(arrays: ArrayRecord | None) -> np.ndarray:
    assert arrays is not None
    return arrays.to_torch_state_dict()["w"].numpy().astype(np.float64)


def test_fedavg_weights_sites_by_their_number_of_cases(in_a_run: None) -> None:
    strategy = build_strategy({"strategy": "fedavg"}, 2)
    assert type(strategy) is FedAvg
    arrays, _ = strategy.aggregate_train(1, [_reply(0.0, 1), _reply(1.0, 3)])
    assert np.allclose(_w(arrays), 0.75)


def test_fedprox_sends_mu_to_the_sites() -> None:
    strategy = build_strategy({"strategy": "fedprox", "proximal_mu": 0.05}, 3)
    assert isinstance(strategy, FedProx) and strategy.proximal_mu == 0.05


def test_server_side_dp_clips_each_update_and_adds_noise_of_the_documented_std(in_a_run: None) -> None:
    noise, clip = 0.5, 2.0
    strategy = build_strategy({"strategy": "fedavg", "dp": {"mode": "server_fixed_clipping",
                                                            "noise_multiplier": noise, "clipping_norm": clip}}, 2)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    # What configure_train records as the round's global weights (the reference of each update).
    strategy.current_arrays = ArrayRecord(torch_state_dict={"w": torch.zeros(N)})
    big = np.full(N, 1.0)  # update norm sqrt(N) = 141 >> clip: must be scaled down to norm 2
    arrays, _ = strategy.aggregate_train(1, [_reply(big, 5), _reply(big, 5)])
    w = _w(arrays)
    # Noise std = noise_multiplier * clipping_norm / sampled sites; mean = clipped update.
    assert w.std() == pytest.approx(noise * clip / 2, rel=0.05)
    assert w.mean() == pytest.approx(clip / np.sqrt(N), abs=4 * noise * clip / 2 / np.sqrt(N))


def test_bad_strategy_settings_name_the_key() -> None:
    with pytest.raises(UsageError, match="federation.strategy='fedsgd'"):
        build_strategy({"strategy": "fedsgd"}, 2)
    with pytest.raises(UsageError, match="federation.dp.mode='local'"):
        build_strategy({"strategy": "fedavg", "dp": {"mode": "local"}}, 2)
    with pytest.raises(UsageError, match="federation.min_sites=4"):
        build_strategy({"strategy": "fedavg", "min_sites": 4}, 3)


def test_min_sites_lets_a_round_finish_without_every_site() -> None:
    strategy = build_strategy({"strategy": "fedavg", "min_sites": 2}, 3)
    assert isinstance(strategy, FedAvg)
    assert (strategy.min_train_nodes, strategy.min_available_nodes) == (2, 2)


def test_site_settings_come_from_the_supernode_node_config(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    dataset = tmp_path / "O'BRIEN, Seamus (Müller) \"THX\""  # quotes Flower's inline pairs cannot carry
    dataset.mkdir()
    path = _node_config(tmp_path / "w" / "node-config.toml",
                        {"site": "Hospital A", "dataset-dir": str(dataset), "work-dir": str(tmp_path / "w")})
    parsed = parse_config_args([str(path)])  # Flower's own parser of --node-config
    settings = SiteSettings.from_node_config(parsed)
    assert (settings.name, settings.dataset_dir) == ("Hospital A", dataset)
    with pytest.raises(UsageError, match="node-config.dataset-dir"):
        SiteSettings.from_node_config({"site": "A", "dataset-dir": str(tmp_path / "nope"), "work-dir": "w"})
    with pytest.raises(UsageError, match="node-config.site"):
        SiteSettings.from_node_config({"dataset-dir": str(tmp_path), "work-dir": "w"})


def test_config_records_carry_the_recipe_as_text() -> None:
    rec = ConfigRecord({"recipe": "data:\n  task: segmentation\n", "local-epochs": 2})
    assert rec["recipe"].startswith("data:")
