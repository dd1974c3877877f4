"""Which MLflow store a job logs to: config, environment, token file, offline (no service needed:
an unreachable server is a port nothing listens on)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imaging.tracking.connect import TOKEN_ENV, load_token, resolve_store


def _dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _cfg(tmp_path: Path, **tracking: object):
    return OmegaConf.create({"run_dir": str(tmp_path / "run"), "paths": {
        "mlflow_db": str(tmp_path / "mlflow" / "mlflow.db"), "mlflow_artifacts": str(tmp_path / "mlflow" / "a")},
        "tracking": {"uri": None, "connect_timeout_s": 1, **tracking}})


def test_embedded_then_environment_then_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_store(_cfg(tmp_path)).uri == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert resolve_store(_cfg(tmp_path)).uri == "sqlite:////elsewhere/x.db"
    assert resolve_store(_cfg(tmp_path, uri="sqlite:////cfg.db")).uri == "sqlite:////cfg.db"


def test_unreachable_server_falls_back_to_a_file_store_in_the_run_dir(tmp_path: Path) -> None:
    dead = _dead_uri()
    store = resolve_store(_cfg(tmp_path, uri=dead))
    assert store.offline and store.server_uri == dead
    assert store.uri == (tmp_path / "run" / "mlflow-offline" / "train").resolve().as_uri()
    assert (tmp_path / "run" / "mlflow-offline" / "train" / "SERVER").read_text().strip() == dead
    strict = resolve_store(_cfg(tmp_path, uri=dead, offline_fallback=False))
    assert not strict.offline and strict.uri == dead
    assert resolve_store(_cfg(tmp_path, uri=dead, offline=True, offline_fallback=False)).offline
    assert not resolve_store(_cfg(tmp_path / "b", uri=dead), probe=False).offline
    assert not (tmp_path / "b").exists()


def test_token_from_file_is_exported_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = tmp_path / "token"
    token.write_text("s3cr3t-t0ken\n")
    token.chmod(0o644)
    assert load_token({"token_file": str(token)})
    assert os.environ[TOKEN_ENV] == "s3cr3t-t0ken"
    assert "s3cr3t" not in caplog.text and "readable by others" in caplog.text
    with pytest.raises(FileNotFoundError, match="missing-token"):
        load_token({"token_file": str(tmp_path / "missing-token")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_token({"token_file": str(tmp_path / "empty")})
