"""Hydra multirun sweeps for ``imaging submit -m``: one Slurm job per point.

We expand ``a=1,2 b=x,y`` with Hydra's own override parser and
:class:`~hydra._internal.core_plugins.basic_sweeper.BasicSweeper` (the same
cartesian product ``-m`` gives locally) and render one sbatch script per point,
instead of running the sweep through a Hydra launcher plugin: each point is
then an ordinary, readable, requeueable job with its own run dir (see
docs/slurm.md for why not hydra-submitit-launcher).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """``["a=1,2", "b=x"]`` -> ``[["a=1", "b=x"], ["a=2", "b=x"]]`` (Hydra's BasicSweeper order).

    Raises
    ------
    hydra.errors.HydraException
        A sweep the basic sweeper cannot expand (``range``/``interval`` without choices).
    """
    if not overrides:
        return [[]]
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [list(point) for point in BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]]


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """Keys whose value varies across the sweep (``a=1,2`` -> ``a``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def point_suffix(point: Sequence[str], keys: Sequence[str]) -> str:
    """A filesystem-safe tag for a sweep point, from its swept values: ``lr0.001-modelunet``."""
    parts = []
    for item in point:
        key, _, value = item.partition("=")
        if key in keys:
            short = key.split(".")[-1].lstrip("+~")
            parts.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{short}{value}"))
    return "-".join(parts)
