"""Typed settings of the ``federation`` group (``imaging federate``, ``imaging evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.settings.check import PORT, setting


@dataclass
class PrivacySettings:
    """``federation.dp``: Flower's central differential privacy."""

    mode: str = setting("none", choices=("none", "server_fixed_clipping"))
    noise_multiplier: float = setting(1.0, min=0.0)
    clipping_norm: float = setting(1.0, gt=0.0)
    delta: float = setting(1e-5, gt=0.0, lt=1.0)


@dataclass
class FederationSlurmSettings:
    """``federation.slurm``: the SuperLink and SuperNode jobs."""

    host: str = setting("0.0.0.0")
    port: int | None = setting(None, **PORT)
    advertise: str | None = setting(None)
    insecure: bool = setting(True)
    ssl_certfile: str | None = setting(None)
    ssl_keyfile: str | None = setting(None)
    ssl_ca_certfile: str | None = setting(None)
    enable_supernode_auth: bool = setting(False)
    supernode_private_keys: dict[str, Any] = setting(None)
    address_timeout_s: float = setting(900, gt=0.0)
    max_wait_time_s: float = setting(300, gt=0.0)


@dataclass
class FederationSettings:
    """``federation.*``: sites, rounds, strategy, privacy (``imaging/conf/federation/default.yaml``)."""

    sites: list[str] = setting(None)
    datasets: dict[str, Any] = setting(None)
    synthetic: dict[str, Any] | None = setting(None)
    rounds: int = setting(5, min=1)
    local_epochs: int = setting(2, min=1)
    local_optimizer: str = setting("keep", choices=("keep", "fresh"))
    baselines: list[str] = setting(None, each_choices=("pooled", "single"))
    strategy: str = setting("fedavg", choices=("fedavg", "fedprox"))
    proximal_mu: float = setting(0.01, min=0.0)
    min_sites: int | None = setting(None, min=1)
    round_timeout_s: float = setting(900, gt=0.0)
    connect_timeout_s: float = setting(120, gt=0.0)
    superlink: str | None = setting(None)
    root_certificates: str | None = setting(None)
    dp: PrivacySettings = field(default_factory=PrivacySettings)
    slurm: FederationSlurmSettings = field(default_factory=FederationSlurmSettings)
