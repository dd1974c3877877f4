"""Shared fixtures and the skip policy.

Services (Slurm, MLflow server, ...) are started for real by the fixtures listed
in ``pytest_plugins`` and stopped by PID. A tier whose service cannot start
FAILS (the fixture says which command installs it); nothing skips silently:
see tests/skip_policy.py (``--opt-out=TIER`` leaves a tier out on purpose).
"""

from __future__ import annotations

import os

# Two cores here: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("IMAGING_TEST", "1")

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
