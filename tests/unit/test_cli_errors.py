"""The error contract, driven as a user drives it: `imaging <cmd>` as a subprocess.

Each bad invocation must exit 2 with exactly one line on stderr that names the bad
value, and no traceback (README "Exit codes").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imaging.project import MARKER, find_root, write_marker

REPO = Path(__file__).resolve().parents[2]
# Hydra's "[2026-12-02 10:00:00,123][...]" and MLflow's "2026/12/02 10:00:00 INFO ..." records.
LOG_RECORD = re.compile(r"^\[?\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d")


def imaging(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("IMAGING_ROOT", "IMAGING_DEID_SECRET", "MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", "imaging", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=300)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without log records (timestamped lines are logging, not the error report)."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)]


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "HYDRA_FULL_ERROR" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_marker(tmp_path)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    return tmp_path


def test_missing_input_folder(project: Path) -> None:
    line = assert_one_line(imaging(["ingest", "input_dir=/nonexistent/export", f"output_dir={project}/ds",
                                    "demo_key=true"], project), "input_dir", "/nonexistent/export")
    assert line.startswith("imaging ingest: ")


def test_a_file_where_a_folder_is_expected(project: Path) -> None:
    f = project / "export.zip"
    f.write_text("not a folder")
    assert_one_line(imaging(["deid", f"input_dir={f}", f"output_dir={project}/out", "demo_key=true"], project),
                    "input_dir", "export.zip", "expected a folder")


@pytest.mark.parametrize(("cmd", "old", "new"), [
    ("deid", "deid.secret_file=/k", "secret_file"), ("deid", "deid.options.keep_age_90_plus=true",
                                                       "deid_options.keep_age_90_plus"),
    ("infer", "seg.deid_options.keep_age_90_plus=true", "deid_options.keep_age_90_plus"),
])
def test_an_old_key_is_refused_with_its_new_name(project: Path, cmd: str, old: str, new: str) -> None:
    """One key per setting in every command; the old spelling says which key replaced it."""
    assert_one_line(imaging([cmd, old], project), old.split("=")[0], f"renamed to {new}")


def test_version(project: Path) -> None:
    proc = imaging(["--version"], project)
    assert proc.returncode == 0 and proc.stdout.strip() == f"imaging {__import__('imaging').__version__}"


def test_output_folder_that_cannot_be_written(project: Path) -> None:
    (project / "export").mkdir()
    blocker = project / "blocker"
    blocker.write_text("a file")
    # Root can write anywhere mode bits forbid, so the folder sits below a *file*.
    assert_one_line(imaging(["ingest", f"input_dir={project}/export", f"output_dir={blocker}/ds",
                             "demo_key=true"], project), "output_dir", "blocker")


def test_missing_secret(project: Path) -> None:
    (project / "export").mkdir()
    assert_one_line(imaging(["ingest", f"input_dir={project}/export", f"output_dir={project}/ds"], project),
                    "secret_file")


def test_missing_mandatory_key(project: Path) -> None:
    assert_one_line(imaging(["ingest", f"output_dir={project}/ds", "demo_key=true"], project),
                    "input_dir is required")


def test_unknown_experiment_lists_the_choices(project: Path) -> None:
    line = assert_one_line(imaging(["train", "experiment=demo_sge"], project), "experiment=demo_sge")
    assert "demo_seg" in line


def test_unknown_key_says_how_to_add_one(project: Path) -> None:
    assert_one_line(imaging(["ingest", "input_dir=/tmp", f"output_dir={project}/ds", "wrokers=4"], project),
                    "wrokers", "+wrokers=")


def test_bad_value_names_the_key(project: Path) -> None:
    assert_one_line(imaging(["train", "experiment=demo_seg", "trainer.max_epochs=many"], project),
                    "trainer.max_epochs", "many")


def test_unknown_model_names_the_uri_and_the_store(project: Path) -> None:
    (project / "export").mkdir()
    line = assert_one_line(imaging(["infer", "model=models:/no_such_model@champion", f"input={project}/export",
                                    f"output_dir={project}/pred", "demo_key=true"], project / "sub"),
                           "models:/no_such_model@champion")
    # Run from a subfolder, the store is the project root's, found by its marker.
    assert f"{project}/mlflow/mlflow.db" in line


def test_unknown_command_suggests_the_nearest() -> None:
    proc = imaging(["trian"], REPO)
    assert proc.returncode == 2
    assert "did you mean 'train'" in proc.stderr


def test_debug_shows_the_traceback(project: Path) -> None:
    proc = imaging(["ingest", "input_dir=/nonexistent", f"output_dir={project}/ds", "demo_key=true", "--debug"],
                   project)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_root_is_found_like_git_finds_a_repository(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGING_ROOT", raising=False)
    root = find_root(project / "sub" / "deeper")
    assert (root.path, root.how) == (project.resolve(), "marker")
    monkeypatch.setenv("IMAGING_ROOT", str(project / "sub"))
    assert find_root(project).how == "env"
    monkeypatch.delenv("IMAGING_ROOT")
    bare = project.parent / (project.name + "-bare")
    bare.mkdir()
    assert (find_root(bare).path, find_root(bare).how) == (bare.resolve(), "cwd")
    assert (project / MARKER).is_file()


def test_where_from_a_subfolder_names_the_root_store(project: Path) -> None:
    proc = imaging(["where"], project / "sub" / "deeper")
    assert proc.returncode == 0, proc.stderr
    assert f"project root:  {project}" in proc.stdout
    assert f"sqlite:///{project}/mlflow/mlflow.db" in proc.stdout


def test_unparsable_override(project: Path) -> None:
    assert_one_line(imaging(["train", "experiment=demo_sgе"], project), "cannot parse the override")


def test_config_composed_once_and_multirun_still_sweeps(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra._internal.hydra import Hydra

    from imaging import cli

    export = project / "export"
    export.mkdir()
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode)  # restored after the test
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for name in ("HYDRA_MAIN_MODULE", "HYDRA_FULL_ERROR"):  # set by the dispatcher: restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    calls: list[str] = []
    compose = Hydra.compose_config

    def counting(self: Hydra, *args: object, **kwargs: object) -> object:
        calls.append(str(kwargs.get("run_mode")))
        return compose(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Hydra, "compose_config", counting)
    monkeypatch.chdir(project)
    assert cli.main(["ingest", f"input_dir={export}", f"output_dir={project}/one", "demo_key=true",
                     "progress=false", f"paths.root_dir={project}"]) == 0
    assert calls == ["RunMode.RUN"] and (project / "one" / "catalog.csv").exists()
    # A sweep (-m) is still a sweep: one dataset per value.
    proc = imaging(["ingest", "-m", f"input_dir={export}", f"output_dir={project}/a,{project}/b", "demo_key=true",
                    "progress=false", f"paths.root_dir={project}"], project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (project / "a" / "catalog.csv").exists() and (project / "b" / "catalog.csv").exists()
