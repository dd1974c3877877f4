"""Shared fixtures. Services (Slurm, MLflow server) are started for real by
fixtures in tests/integration/conftest.py and stopped by PID."""

from __future__ import annotations

import os

# Two cores here: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("IMAGING_TEST", "1")

# Fixture modules: real services and shared synthetic data, each owned by one part.
pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.orthanc",
    "tests.fixtures.slurm_cluster",
]
