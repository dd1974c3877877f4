"""`imaging mlflow sync RUN_DIR` with nothing to sync is a bad argument (exit 2, one line), not a bug (exit 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging.cli import main as cli
from imaging.errors import EXIT_USAGE


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


def test_run_dir_without_offline_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "demo_seg" / "run-cfg0123"
    (run_dir / "checkpoints").mkdir(parents=True)  # a real-looking run dir that logged to the server
    assert cli(["mlflow", "sync", str(run_dir), "--tracking-uri", "http://127.0.0.1:9"]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("imaging mlflow:") and str(run_dir) in line and "mlflow-offline" in line


def test_missing_run_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli(["mlflow", "sync", str(missing)]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert str(missing) in line and "no such folder" in line


def test_store_without_recorded_server_and_no_uri_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "run" / "mlflow-offline" / "train"
    store.mkdir(parents=True)  # no SERVER file: the job's server is unknown
    assert cli(["mlflow", "sync", str(tmp_path / "run")]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "--tracking-uri" in line and str(store) in line
