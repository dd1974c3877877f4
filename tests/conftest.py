"""Shared fixtures and the skip policy.

Services (Slurm, MLflow server, ...) are started for real by the fixtures listed
in ``pytest_plugins`` and stopped by PID. A tier whose service cannot start
FAILS (the fixture says which command installs it); nothing skips silently:
see tests/skip_policy.py (``--opt-out=TIER`` leaves a tier out on purpose).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Two cores here: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("IMAGING_TEST", "1")
_SESSION_ENV = {k: v for k, v in os.environ.items() if k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}

# Fixture modules: real services and shared synthetic data, each owned by one part;
# then the skip policy (--opt-out, and a failing run for any other skip).
pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.postgres",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.orthanc",
    "tests.fixtures.slurm_cluster",
    "tests.skip_policy",
]


def _restore_session_mlflow_env() -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if name in _SESSION_ENV:
            os.environ[name] = _SESSION_ENV[name]
        else:
            os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _mlflow_store_env_is_the_users() -> Iterator[None]:
    """Each test starts, and ends, with the MLflow store variables the session started with:
    MLflow's ``set_tracking_uri`` (in code under test, in a test, or in MLflow itself) writes
    ``MLFLOW_TRACKING_URI``, and a store left there by one test would be the next test's
    store (imaging reads the variable, as the README says). Restored after the test too, not
    only before: the next module's fixtures run before this fixture does."""
    _restore_session_mlflow_env()
    yield
    _restore_session_mlflow_env()
