"""Which MLflow store: the one place that derives tracking URIs and clients.

Order, the same for every command (``imaging train``, ``imaging model``, notebooks):
an explicit URI (``tracking.uri``, ``--tracking-uri``), else ``$MLFLOW_TRACKING_URI``,
else the embedded SQLite store ``sqlite:///<paths.mlflow_db>``
(``<project root>/mlflow/mlflow.db``, see ``imaging/conf/paths/default.yaml``).
Light on purpose (mlflow is imported only when a client is made), so notebooks
and ``imaging where`` can use it without the training stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

ENV = "MLFLOW_TRACKING_URI"


def embedded_uri(mlflow_db: str | os.PathLike[str]) -> str:
    """``sqlite:///<absolute path>`` of an embedded store's database file."""
    return f"sqlite:///{Path(mlflow_db).resolve()}"


def project_db(root: str | os.PathLike[str]) -> Path:
    """``<root>/mlflow/mlflow.db``: ``paths.mlflow_db`` for a project root."""
    return Path(root) / "mlflow" / "mlflow.db"


def tracking_uri(explicit: str | None, mlflow_db: str | os.PathLike[str]) -> str:
    """The store to use: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the embedded one."""
    return str(explicit or os.environ.get(ENV) or embedded_uri(mlflow_db))


def is_local_store(uri: str) -> bool:
    """A store without an artifact server (``sqlite:``, a plain folder): artifacts
    then go under ``paths.mlflow_artifacts`` instead of MLflow's ``./mlruns``."""
    return uri.startswith(("sqlite:", "file:", "/"))


def activate(uri: str) -> None:
    """Make ``uri`` MLflow's tracking and registry store for this process's fluent API,
    leaving ``$MLFLOW_TRACKING_URI``/``$MLFLOW_REGISTRY_URI`` as the user set them.

    ``mlflow.set_tracking_uri`` also writes the environment variable; left there, the
    next run in the same process (a ``-m`` sweep, a notebook, a test) would read the
    previous run's store as if the user had chosen it.
    """
    import mlflow

    saved = {name: os.environ.get(name) for name in (ENV, "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def reopen_run(run_id: str, experiment_id: str) -> Any:
    """``mlflow.start_run(run_id=...)`` for a run of ``experiment_id`` in the active store.

    MLflow refuses to reopen a run outside the process's active experiment, which may be
    another store's (a notebook's ``set_experiment``, an earlier ``imaging mlflow sync``):
    that experiment is made active first.
    """
    import mlflow

    mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow.start_run(run_id=run_id)


def client_for(uri: str | None) -> MlflowClient:
    """A client whose model registry is the same store as its tracking (MLflow would
    otherwise take the registry from ``$MLFLOW_REGISTRY_URI`` or global state)."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
