"""Where the project lives: found the way git finds a repository.

Runs, logs and the embedded MLflow store live under the project root, so a model
registered by ``make demo`` must be found from any folder of the checkout. The root is

1. ``IMAGING_ROOT`` when set;
2. else the nearest folder, from the current one upwards, holding the marker file
   :data:`MARKER` (``imaging init`` and ``make demo`` write it);
3. else the current folder, with a warning saying where the store will be.

``imaging/conf/paths/default.yaml`` reads it through the ``${imaging_root:}`` resolver, so
paths still come from ``imaging/conf/paths/`` only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = ".imaging"
ROOT_ENV = "IMAGING_ROOT"


@dataclass(frozen=True)
class ProjectRoot:
    """The root folder and how it was found (``env``, ``marker`` or ``cwd``)."""

    path: Path
    how: str

    def describe(self) -> str:
        return {
            "env": f"{self.path} (from ${ROOT_ENV})",
            "marker": f"{self.path} (marker {self.path / MARKER})",
            "cwd": f"{self.path} (no ${ROOT_ENV} and no {MARKER} marker above the current folder: "
                   "using the current folder; `imaging init` makes it a project)",
        }[self.how]


def find_root(start: str | os.PathLike[str] | None = None) -> ProjectRoot:
    """The project root for ``start`` (default: the current folder); see the module doc."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return ProjectRoot(Path(env).expanduser().resolve(), "env")
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file():
            return ProjectRoot(folder, "marker")
    return ProjectRoot(here, "cwd")


@lru_cache(maxsize=8)
def _resolved(cwd: str, env: str | None) -> str:
    root = find_root(cwd)
    if root.how == "cwd":
        log.warning("project root: %s", root.describe())
    return str(root.path)


def root_dir() -> str:
    """The root as a string for the config resolver (warns once per folder when it falls back)."""
    return _resolved(os.getcwd(), os.environ.get(ROOT_ENV))


def write_marker(folder: str | os.PathLike[str]) -> Path:
    """Make ``folder`` a project root (idempotent); returns the marker's path."""
    path = Path(folder).expanduser().resolve() / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# imaging project root: runs/, logs/ and mlflow/ live beside this file\n")
    return path


def register_resolvers() -> None:
    """Register ``${imaging_root:}`` and ``${config_hash:}`` with OmegaConf (idempotent)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # the package imports without omegaconf (e.g. a bare audit tool)
        return
    if not OmegaConf.has_resolver("imaging_root"):
        OmegaConf.register_new_resolver("imaging_root", root_dir)
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", _config_hash)


def _config_hash(*, _root_: Any) -> str:
    # Imported on use: the package imports without the training stack.
    from imaging.plan.identity import resolve_config_hash

    return resolve_config_hash(_root_=_root_)
