"""`imaging submit --dry-run` (sweeps, run dirs, records), status parsing, the Apptainer recipe as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imaging.apps.submit import main as submit_main
from imaging.launch.slurm import parse_scontrol
from imaging.launch.submit import prepare, submit
from imaging.launch.sweep import expand_sweep, point_suffix, swept_keys

ROOT = Path(__file__).resolve().parents[2]


def test_expand_sweep_is_hydra_cartesian_product() -> None:
    points = expand_sweep(["trainer.lr=0.001,0.003", "model=unet,segresnet", "trainer.seed=0"])
    assert points == [
        ["trainer.lr=0.001", "model=unet", "trainer.seed=0"],
        ["trainer.lr=0.001", "model=segresnet", "trainer.seed=0"],
        ["trainer.lr=0.003", "model=unet", "trainer.seed=0"],
        ["trainer.lr=0.003", "model=segresnet", "trainer.seed=0"],
    ]
    assert expand_sweep(["a=1"]) == [["a=1"]] and expand_sweep([]) == [[]]
    assert swept_keys(["trainer.lr=0.001,0.003", "x=1"]) == ["trainer.lr"]
    assert point_suffix(["trainer.lr=0.001", "x=1"], ["trainer.lr"]) == "lr0.001"


def test_multirun_dry_run_gives_one_script_per_point_in_distinct_run_dirs(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = submit_main(["-m", "--dry-run", "train", "experiment=demo_seg", f"paths.root_dir={tmp_path}",
                      "data.dataset_dir=/data/ds", "trainer.lr=0.001,0.003", "launcher=slurm"])
    assert rc == 0
    scripts = sorted(tmp_path.glob("runs/demo_seg/*/slurm/train.sbatch"))
    # The lr is part of the config hash, so each point has its own run dir already.
    names = [s.parents[1].name for s in scripts]
    assert len(set(names)) == 2 and all(re.fullmatch(r"unet-fold0-seed0-cfg[0-9a-f]{8}", n) for n in names)
    assert sorted(re.search(r"trainer\.lr=(\S+)", s.read_text())[1] for s in scripts) == ["0.001", "0.003"]  # type: ignore[index]
    for script in scripts:
        text = script.read_text()
        assert f"--output={script.parent}/slurm-%j.out" in text
    assert capsys.readouterr().out.count("rendered (dry run) train job") == 2


def test_submit_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert submit_main([]) == 2
    assert submit_main(["--bogus", "train"]) == 2
    assert submit_main(["train", "experiment=nope", "launcher=slurm"]) == 2
    assert "experiment" in capsys.readouterr().err


def test_dry_run_writes_script_only(tmp_path: Path) -> None:
    prep = prepare("infer", ["model=models:/m@champion", "input=/in", f"output_dir={tmp_path / 'pred'}",
                             f"paths.root_dir={tmp_path}", "launcher=slurm", "launcher.array_tasks=3",
                             f"launcher.jobs_index_dir={tmp_path / 'index'}"], cwd=tmp_path)
    sub = submit(prep, dry_run=True)
    assert sub.job_id == "dry-run" and sub.array == "0-2"
    assert Path(sub.script).read_text() == prep.script
    assert not (tmp_path / "index").exists()  # nothing recorded: no job exists
    assert sub.log == str(tmp_path / "pred/slurm/slurm-%A_%a.out")
    assert sub.log_for(1) == str(tmp_path / "pred/slurm/slurm-dry-run_1.out")


def test_parse_scontrol_one_line_per_job() -> None:
    text = ("JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=infer-pred UserId=root(0) JobState=RUNNING "
            "Reason=None Dependency=(null) Requeue=1 Restarts=0 ExitCode=0:0 RunTime=00:00:05 "
            "Command=/out/pred/slurm/infer.sbatch NodeList=vm\n"
            "JobId=13 JobName=x JobState=PENDING Reason=BeginTime Restarts=1 ExitCode=0:0 Command=/r/train.sbatch\n")
    jobs = parse_scontrol(text)
    assert [j["JobId"] for j in jobs] == ["12", "13"]
    assert jobs[0]["ArrayTaskId"] == "2" and jobs[1]["Reason"] == "BeginTime" and jobs[1]["Restarts"] == "1"


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            sections[current] = []
        elif line.strip() and not line.lstrip().startswith("#"):
            sections[current].append(line.strip())
    return sections


def test_apptainer_recipe() -> None:
    """Apptainer is not installable here: check the recipe's structure and required lines."""
    text = (ROOT / "slurm" / "imaging.def").read_text()
    s = _sections(text)
    header = dict(line.split(":", 1) for line in s["header"])
    assert header["Bootstrap"].strip() == "docker"
    base = header["From"].strip()
    assert re.match(r"(nvcr\.io/nvidia/pytorch:|pytorch/pytorch:.*-cuda)", base), base
    assert {"files", "post", "runscript", "test", "environment", "help", "labels"} <= set(s)
    copied = {line.split()[0] for line in s["files"]}
    assert {"pyproject.toml", "imaging"} <= copied  # configs and templates travel inside the package
    assert any("pip wheel" in line and "/opt/imaging" in line for line in s["post"])
    assert any("pip install" in line and ".whl" in line for line in s["post"])  # installed as a wheel
    assert not any(" -e " in line for line in s["post"])
    assert s["runscript"] == ['exec imaging "$@"']
    assert any(line.startswith("imaging --help") for line in s["test"])
    assert "apptainer build imaging.sif slurm/imaging.def" in text  # the documented build command
    # Every path %files copies exists in the repository.
    for src in copied:
        assert (ROOT / src).exists(), src
