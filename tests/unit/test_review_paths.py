"""The notebooks' defaults: the `make demo` layout under $IMAGING_ROOT or the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imaging.resources import CONF_DIR
from imaging.review.paths import demo_paths, embedded_tracking_uri, project_root, require_dir

REPO = Path(__file__).resolve().parents[2]


def test_root_is_the_repository_without_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGING_ROOT", raising=False)
    assert project_root() == REPO
    paths = demo_paths()
    assert paths.dataset_dir == REPO / "demo" / "dataset"
    assert paths.predictions_dir == REPO / "demo" / "predictions"
    assert paths.tracking_uri == f"sqlite:///{REPO / 'mlflow' / 'mlflow.db'}"


def test_env_var_moves_the_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGING_ROOT", str(tmp_path))
    assert demo_paths().export_dir == tmp_path / "demo" / "export"
    assert demo_paths().heldout_dir == tmp_path / "demo" / "heldout"
    assert embedded_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"


def test_same_store_as_the_shipped_paths_config(tmp_path: Path) -> None:
    # conf/paths/default.yaml: mlflow_db = ${paths.root_dir}/mlflow/mlflow.db; demo_dir = .../demo
    cfg = OmegaConf.create({"paths": OmegaConf.load(CONF_DIR / "paths" / "default.yaml")})
    cfg.paths.root_dir = str(tmp_path)
    assert embedded_tracking_uri(tmp_path) == f"sqlite:///{Path(cfg.paths.mlflow_db).resolve()}"
    assert demo_paths(tmp_path).demo_dir == Path(cfg.paths.demo_dir)


def test_require_dir_says_what_to_do(tmp_path: Path) -> None:
    assert require_dir(tmp_path, "dataset folder", "run make demo") == tmp_path
    with pytest.raises(FileNotFoundError, match=r"dataset folder '.*nope' does not exist: run `make demo`"):
        require_dir(tmp_path / "nope", "dataset folder", "run `make demo`")
