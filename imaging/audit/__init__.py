"""PHI audit: prove that nothing identifying reached files or an MLflow store.

``scan_paths`` (files of every kind) and ``build_needles`` need no mlflow;
``scan_mlflow`` is imported on first use so ``imaging.audit`` stays light.
"""

from __future__ import annotations

from typing import Any

from imaging.audit.files import scan_file, scan_paths
from imaging.audit.needles import (
    DEFAULT_CANARY,
    Hit,
    Needles,
    as_needles,
    build_needles,
    default_canary,
    load_link_table,
    load_manifest,
    mask,
)

__all__ = [
    "DEFAULT_CANARY",
    "Hit",
    "Needles",
    "as_needles",
    "build_needles",
    "default_canary",
    "load_link_table",
    "load_manifest",
    "mask",
    "scan_file",
    "scan_mlflow",
    "scan_paths",
]


def __getattr__(name: str) -> Any:
    if name == "scan_mlflow":
        from imaging.audit.mlflow_scan import scan_mlflow

        return scan_mlflow
    raise AttributeError(f"module 'imaging.audit' has no attribute {name!r}")
