"""Which MLflow store a job logs to: embedded SQLite, a tracking server, or offline.

Order: ``tracking.uri`` from the config, else ``MLFLOW_TRACKING_URI``, else the
embedded SQLite store under ``paths.mlflow_db``. A server URI (``http(s)://``)
is checked once at start (``/health``); a job that cannot reach it, or that asks
for ``tracking.offline=true``, logs to a *file store* in its own run dir instead
(``<run_dir>/mlflow-offline/<store>``: plain files, no database lock, safe on a
parallel file system) and ``imaging mlflow sync RUN_DIR`` uploads it later.

The server's token comes from ``tracking.token_file`` (a file only the user can
read) or the ``MLFLOW_TRACKING_TOKEN`` environment variable, which MLflow's
client sends as a bearer token; it is never logged nor written to the run.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from imaging.tracking.store import embedded_uri, is_local_store, tracking_uri

log = logging.getLogger(__name__)

OFFLINE_DIR = "mlflow-offline"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"


@dataclass
class TrackingStore:
    """Where this job logs: ``uri`` (and the artifact root for stores we create)."""

    uri: str
    artifact_location: str | None
    offline: bool = False
    server_uri: str | None = None  # the server an offline store is meant for (sync target)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def load_token(tracking: DictConfig | dict) -> bool:
    """Put the server token into ``MLFLOW_TRACKING_TOKEN`` (read from ``tracking.token_file`` if set).

    Returns whether a token is in place. The token itself is never logged.

    Raises:
        FileNotFoundError: ``token_file`` is set but does not exist (names the file).
        ValueError: the token file is empty (names the file).
    """
    token_file = tracking.get("token_file") if tracking is not None else None
    if token_file:
        path = Path(str(token_file)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tracking.token_file '{path}' does not exist")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"tracking.token_file '{path}' is empty")
        if path.stat().st_mode & 0o077:
            log.warning("tracking.token_file '%s' is readable by others: chmod 600 it", path)
        os.environ[TOKEN_ENV] = token
    return bool(os.environ.get(TOKEN_ENV))


def server_reachable(uri: str, timeout_s: float = 10.0) -> bool:
    """Whether the tracking server answers ``GET /health`` within ``timeout_s``."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            return int(resp.status) == 200
    except (OSError, ValueError):
        return False


def offline_store_dir(cfg: DictConfig) -> Path:
    """``<run_dir>/mlflow-offline/train`` for training, ``<output_dir>/mlflow-offline/shard-I-of-N``
    for an inference shard (each process its own store: no two writers share files)."""
    if cfg.get("run_dir"):
        return Path(str(cfg.run_dir)) / OFFLINE_DIR / "train"
    base = Path(str(cfg.output_dir))
    shard = cfg.get("shard")
    name = f"shard-{shard.index}-of-{shard.count}" if shard is not None else "job"
    return base / OFFLINE_DIR / name


def file_store_uri(directory: Path) -> str:
    # MLflow 3 keeps its file store in maintenance mode behind an opt-in; an offline
    # store is exactly the case it is kept for (no server, no database, parallel FS).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return directory.resolve().as_uri()


def resolve_store(cfg: DictConfig, probe: bool = True) -> TrackingStore:
    """The store this job logs to (see the module docstring); ``probe=False`` only reports
    the configured store (no /health check, no offline store created).

    Raises:
        FileNotFoundError, ValueError: a configured token file is missing or empty.
    """
    tracking = cfg.tracking
    db = Path(str(cfg.paths.mlflow_db))
    # One order everywhere (imaging.tracking.store): tracking.uri, $MLFLOW_TRACKING_URI, embedded.
    uri = tracking_uri(tracking.get("uri"), db)
    if is_local_store(uri):  # no artifact server: artifacts under paths.mlflow_artifacts
        if uri == embedded_uri(db):
            db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = Path(str(cfg.paths.mlflow_artifacts)).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        return TrackingStore(uri, artifacts.as_uri())
    if not is_server(uri) or not probe:
        return TrackingStore(uri, None, server_uri=uri if is_server(uri) else None)
    load_token(tracking)
    offline = bool(tracking.get("offline", False))
    if (not offline and tracking.get("offline_fallback", True)
            and not server_reachable(uri, float(tracking.get("connect_timeout_s", 10)))):
        log.warning("MLflow server %s is unreachable: logging offline into the run dir "
                    "(upload later with `imaging mlflow sync`)", uri)
        offline = True
    if not offline:
        return TrackingStore(uri, None, server_uri=uri)
    directory = offline_store_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "SERVER").write_text(uri + "\n", encoding="utf-8")
    log.info("MLflow offline store: %s", directory)
    return TrackingStore(file_store_uri(directory), None, offline=True, server_uri=uri)
