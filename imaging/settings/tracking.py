"""Typed settings of the ``tracking`` group (MLflow; ``imaging/conf/tracking/``)."""

from __future__ import annotations

from dataclasses import dataclass

from imaging.settings.check import setting


@dataclass
class TrackingSettings:
    """``tracking.*``: where runs are logged and what is registered."""

    enabled: bool = setting(True)
    uri: str | None = setting(None)
    experiment_name: str = setting("default")
    run_name: str = setting("")
    registered_model_name: str = setting("")
    register: bool = setting(True)
    alias: str | None = setting("candidate")
    review_cases: int = setting(3, min=0)
    log_checkpoints: bool = setting(True)
    token_file: str | None = setting(None)
    offline: bool = setting(False)
    offline_fallback: bool = setting(True)
    connect_timeout_s: float = setting(10, gt=0.0)
