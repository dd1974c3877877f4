"""Network factory: a plain dict config -> a MONAI network.

The dict (``{"name": "unet", "spatial_dims": 3, ...}``) is the resolved ``model``
config group; the *same* dict is stored with the registered model, and inference
rebuilds the network with :func:`build_network` before loading the weights, so
no pickled module ever crosses the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.networks import nets

# name -> (constructor, task). Add a network by adding one line.
NETWORKS: dict[str, tuple[Callable[..., torch.nn.Module], str]] = {
    "unet": (nets.UNet, "segmentation"),
    "segresnet": (nets.SegResNet, "segmentation"),
    "dynunet": (nets.DynUNet, "segmentation"),  # nnU-Net's network; deep supervision in training mode
    "swinunetr": (nets.SwinUNETR, "segmentation"),
    "densenet121": (nets.DenseNet121, "classification"),
    "resnet": (nets.ResNet, "classification"),
}


def network_task(name: str) -> str:
    """``segmentation`` or ``classification`` for a registered network name.

    Raises:
        KeyError: unknown name (lists the known ones).
    """
    if name not in NETWORKS:
        raise KeyError(f"model.name '{name}' is not a known network; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name][1]


def check_network_config(config: Mapping[str, Any]) -> None:
    """Check ``config`` against the constructor's signature without building anything.

    Raises:
        KeyError: unknown network name.
        ValueError: a key the constructor does not take, or a required one missing
            (named as ``model.<key>``).
    """
    name = str(config.get("name", ""))
    network_task(name)
    ctor = NETWORKS[name][0]
    params = inspect.signature(ctor).parameters
    kwargs = {k: v for k, v in config.items() if k != "name"}
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params]
    if unknown and not takes_var_kw:
        raise ValueError(f"model.{unknown[0]}: '{name}' takes no argument '{unknown[0]}' "
                         f"(it takes {sorted(p for p in params if p != 'self')})")
    required = [p for p, spec in params.items()
                if spec.default is inspect.Parameter.empty and spec.kind not in
                (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL) and p != "self"]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise ValueError(f"model.{missing[0]}: required by '{name}' but not set")


def build_network(config: Mapping[str, Any]) -> torch.nn.Module:
    """Build the network described by ``config``.

    Args:
        config: ``{"name": <one of NETWORKS>, **constructor kwargs}`` (plain types;
            lists become tuples where MONAI expects sequences).

    Raises:
        KeyError, ValueError: see :func:`check_network_config`.
    """
    check_network_config(config)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "name"}
    return NETWORKS[str(config["name"])][0](**kwargs)
