"""The built wheel works as a site installs it: from an empty folder, no checkout.

The wheel is built from this checkout and installed with ``--no-deps`` into a fresh
venv that sees the third-party packages of the test environment (one ``.pth`` line:
nothing of the editable install of this checkout is on its path). From an empty
folder it then runs synth -> ingest, composes a training config, renders an sbatch
script, and takes a site's own experiment from ``IMAGING_CONFIG_DIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools' build/ would otherwise land in the checkout
    # (and keep modules deleted since, which then ship in the next wheel).
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "imaging", src / "imaging", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("imaging-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "imaging/conf/train.yaml" in names and "imaging/launch/templates/train.sbatch.j2" in names
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The test environment's third-party packages, after the venv's own (where the wheel goes).
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "IMAGING_", "MLFLOW_"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    work = tmp / "empty"
    work.mkdir()
    env["IMAGING_ROOT"] = str(work)
    return work, env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_runs_from_an_empty_folder(wheel_env: tuple[Path, dict[str, str]]) -> None:
    work, env = wheel_env
    where = _run(["python", "-c", "import imaging; print(imaging.__file__)"], work, env)
    assert where.returncode == 0 and str(REPO) not in where.stdout, where.stdout  # the wheel's copy, not ours
    version = _run(["imaging", "--version"], work, env)
    assert version.returncode == 0 and version.stdout.startswith("imaging "), version.stderr
    synth = _run(["imaging", "synth", "output_dir=export", "subjects=1", "cases=none", "dicomdir=false"], work, env)
    assert synth.returncode == 0, synth.stderr[-2000:]
    ingest = _run(["imaging", "ingest", "input_dir=export", "output_dir=dataset", "demo_key=true", "workers=1",
                   "progress=false"], work, env)
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert (work / "dataset" / "catalog.csv").read_text().count(",ok,") >= 1
    composed = _run(["imaging", "train", "experiment=demo_seg", "--cfg", "job"], work, env)
    assert composed.returncode == 0 and "max_epochs" in composed.stdout, composed.stderr[-2000:]
    dry = _run(["imaging", "submit", "train", "--dry-run", "experiment=demo_seg", "launcher=slurm"], work, env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    scripts = list(work.rglob("train.sbatch"))
    assert scripts and "#SBATCH" in scripts[0].read_text()


def test_a_site_adds_its_own_experiment(wheel_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    work, env = wheel_env
    site = tmp_path / "site-conf"
    (site / "experiment").mkdir(parents=True)
    (site / "experiment" / "our_liver.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo_seg\n  - _self_\ntrainer:\n  max_epochs: 7\n")
    composed = _run(["imaging", "train", "experiment=our_liver", "--cfg", "job"], work,
                    {**env, "IMAGING_CONFIG_DIR": str(site)})
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "max_epochs: 7" in composed.stdout
    missing = _run(["imaging", "train", "experiment=our_liver", "--cfg", "job"], work,
                   {**env, "IMAGING_CONFIG_DIR": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "IMAGING_CONFIG_DIR" in missing.stderr
