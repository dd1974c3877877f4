"""Where the review notebooks look by default: the ``make demo`` outputs.

The root is ``$IMAGING_ROOT`` when set (as ``imaging/conf/paths/default.yaml`` reads it),
else the repository the package lives in. Under it, as the demo writes them:
``demo/{export,dataset,heldout,predictions}`` and the embedded MLflow store
``mlflow/mlflow.db``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imaging.tracking.store import embedded_uri, project_db

ROOT_ENV = "IMAGING_ROOT"


def project_root() -> Path:
    """``$IMAGING_ROOT`` or the repository root (the folder holding ``imaging/``)."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2]


def embedded_tracking_uri(root: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///<root>/mlflow/mlflow.db``: the store ``imaging train`` uses by default."""
    base = Path(root) if root is not None else project_root()
    return embedded_uri(project_db(base))


@dataclass(frozen=True)
class DemoPaths:
    """The demo's output locations under one root."""

    root: Path

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    @property
    def export_dir(self) -> Path:
        return self.demo_dir / "export"

    @property
    def dataset_dir(self) -> Path:
        return self.demo_dir / "dataset"

    @property
    def heldout_dir(self) -> Path:
        return self.demo_dir / "heldout"

    @property
    def predictions_dir(self) -> Path:
        return self.demo_dir / "predictions"

    @property
    def tracking_uri(self) -> str:
        return embedded_tracking_uri(self.root)


def demo_paths(root: str | os.PathLike[str] | None = None) -> DemoPaths:
    """The demo layout under ``root`` (default :func:`project_root`)."""
    return DemoPaths(Path(root).resolve() if root is not None else project_root())


def require_dir(path: str | os.PathLike[str], what: str, hint: str) -> Path:
    """``path`` as a Path if it is a folder.

    Raises:
        FileNotFoundError: it is not; the message names the path, what it should be and how to make it.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} '{p}' does not exist: {hint}")
    return p
