"""Run identity: a hash of the resolved config minus what may change on resume.

Policy (chosen for issue 15): a training run is identified by
``(experiment, run_name, config hash)``; the hash is part of the run directory
(``run_dir: .../<run_name>-cfg<hash>``, via the ``${config_hash:}`` resolver), so
a changed learning rate, network, augmentation ... gives a *new* run directory
and a new MLflow run, while the same command line (a Slurm requeue, a re-run)
finds its own checkpoints. Keys in :data:`RESUMABLE` do not enter the hash:
they say where, how fast or how long, not what is trained, so changing them
(``trainer.max_epochs=300`` to train longer, another ``paths.root_dir`` or
``tracking.uri``) continues the same run. The data is identified separately by
the catalog hash stored in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Dotted prefixes left out of the hash (a key matches itself and everything below it).
RESUMABLE: tuple[str, ...] = (
    "hydra", "paths", "tracking", "launcher", "run_dir",
    "data.dataset_dir", "data.cache", "data.cache_dir", "data.num_workers",
    "trainer.max_epochs", "trainer.resume", "trainer.progress", "trainer.accelerator",
    "trainer.sw_batch_size", "trainer.compile", "trainer.deterministic",
)
HASH_LEN = 8


def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if not rest:
        del tree[head]
    elif isinstance(tree[head], dict):
        _drop(tree[head], rest)


def identity_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config that defines a run (``RESUMABLE`` keys removed)."""
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(raw, dict)
    for key in RESUMABLE:  # removed before resolving: run_dir itself interpolates the hash
        _drop(raw, key)  # type: ignore[arg-type]
    resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """``HASH_LEN`` hex digits of the SHA-256 of :func:`identity_config`."""
    text = json.dumps(identity_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}."))
    return out


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two identity configs."""
    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def resolve_config_hash(*, _root_: DictConfig) -> str:
    """The ``${config_hash:}`` resolver (registered by :mod:`imaging.project`)."""
    return config_hash(_root_)
