"""Network factories (MONAI networks), registered by name."""

from imaging.models.registry import NETWORKS, build_network, check_network_config, network_task

__all__ = ["NETWORKS", "build_network", "check_network_config", "network_task"]
