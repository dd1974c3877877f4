"""`imaging submit` refuses a bad config before sbatch (exit 2, naming the key), keeps secrets out
of scripts, chains `pipeline` jobs with afterok, and tags MLflow runs with where the job ran."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from imaging.apps.submit import main as submit_main
from imaging.errors import UsageError
from imaging.jobenv import job_tags
from imaging.launch.pipeline import split_sections
from imaging.launch.submit import prepare
from tests.fixtures.train_data import make_train_dataset


@pytest.fixture()
def fake_sbatch(tmp_path: Path) -> tuple[Path, Path]:
    """An `sbatch` stand-in (launcher.sbatch) that logs its arguments and prints a job id:
    the check must happen before it is ever called."""
    calls = tmp_path / "sbatch-calls.txt"
    exe = tmp_path / "sbatch"
    exe.write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho $(( 100 + $(wc -l < {calls}) ))\n')
    exe.chmod(0o755)
    return exe, calls


def _train(tmp: Path, dataset: Path, *extra: str) -> list[str]:
    return ["train", "experiment=demo_seg", f"paths.root_dir={tmp}", f"data.dataset_dir={dataset}",
            "data.split.folds=2", "launcher=slurm", *extra]


def test_missing_dataset_is_refused_before_sbatch(tmp_path: Path, fake_sbatch: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    exe, calls = fake_sbatch
    rc = submit_main(_train(tmp_path, tmp_path / "nope", f"launcher.sbatch={exe}"))
    err = capsys.readouterr().err
    assert rc == 2 and "data.dataset_dir" in err and str(tmp_path / "nope") in err, err
    assert not calls.exists() and not list(tmp_path.glob("runs/**/train.sbatch"))


def test_bad_network_argument_is_refused_before_sbatch(tmp_path: Path, fake_sbatch: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    exe, calls = fake_sbatch
    ds = make_train_dataset(tmp_path / "ds", subjects=2, shape=(16, 16, 8))
    rc = submit_main(_train(tmp_path, ds, "+model.bogus=1", f"launcher.sbatch={exe}"))
    assert rc == 2 and "model.bogus" in capsys.readouterr().err and not calls.exists()
    # The same config without the typo is submitted.
    assert submit_main(_train(tmp_path, ds, f"launcher.sbatch={exe}")) == 0
    assert calls.read_text().count("train.sbatch") == 1


def test_secret_in_launcher_env_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_train_dataset(tmp_path / "ds", subjects=2, shape=(16, 16, 8))
    rc = submit_main(["--dry-run", *_train(tmp_path, ds, "+launcher.env.MLFLOW_TRACKING_PASSWORD=hunter2")])
    err = capsys.readouterr().err
    assert rc == 2 and "launcher.env.MLFLOW_TRACKING_PASSWORD" in err and "secret_files" in err
    assert not list(tmp_path.glob("runs/**/train.sbatch"))


def test_secret_files_must_be_private_and_are_read_at_run_time(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_train_dataset(tmp_path / "ds", subjects=2, shape=(16, 16, 8))
    token = tmp_path / "token"
    token.write_text("s3cr3t-value\n")
    token.chmod(0o644)
    args = ["--dry-run", *_train(tmp_path, ds, f"+launcher.secret_files.MLFLOW_TRACKING_TOKEN={token}")]
    assert submit_main(args) == 2
    assert "mode 0644" in capsys.readouterr().err
    token.chmod(0o600)
    assert submit_main(args) == 0
    script = next(tmp_path.glob("runs/**/train.sbatch")).read_text()
    assert "s3cr3t-value" not in script
    assert f"MLFLOW_TRACKING_TOKEN=$(cat {token}) && export MLFLOW_TRACKING_TOKEN" in script
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_pipeline_chains_ingest_train_infer_with_afterok(tmp_path: Path, fake_sbatch: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    exe, calls = fake_sbatch
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    rc = submit_main(["pipeline", "launcher=slurm", f"launcher.sbatch={exe}", f"paths.root_dir={tmp_path}",
                      "ingest:", f"input_dir={pacs}", f"output_dir={tmp_path / 'dataset'}", "demo_key=true",
                      "train:", "experiment=demo_seg", "launcher.tasks_per_node=2",
                      "infer:", f"output_dir={tmp_path / 'pred'}", "demo_key=true"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lines = calls.read_text().splitlines()
    assert [ln.split()[-1].rsplit("/", 1)[-1] for ln in lines] == ["ingest.sbatch", "train.sbatch", "infer.sbatch"]
    assert "--dependency" not in lines[0]
    assert "--dependency=afterok:101 --kill-on-invalid-dep=yes" in lines[1]
    assert "--dependency=afterok:102 --kill-on-invalid-dep=yes" in lines[2]
    train = Path(lines[1].split()[-1]).read_text()
    infer = Path(lines[2].split()[-1]).read_text()
    assert f"data.dataset_dir={tmp_path / 'dataset'}" in train and "--ntasks-per-node=2" in train
    assert f"input={tmp_path / 'dataset'}" in infer and "model_uri=models:/demo_seg@candidate" in infer


def test_pipeline_sections_and_errors(tmp_path: Path) -> None:
    assert split_sections(["a=1", "train:", "b=2", "infer:", "c=3"]) == {
        "": ["a=1"], "ingest": [], "train": ["b=2"], "infer": ["c=3"]}
    with pytest.raises(UsageError, match="evaluate:"):
        split_sections(["evaluate:", "x=1"])
    with pytest.raises(UsageError, match="twice"):
        split_sections(["train:", "train:"])


def test_job_records_the_launcher_it_runs_under(tmp_path: Path) -> None:
    prep = prepare("train", ["experiment=demo_seg", f"paths.root_dir={tmp_path}", "data.dataset_dir=/d",
                             "launcher=cluster_h100"], cwd=tmp_path)
    assert " launcher=cluster_h100 " in prep.script


def test_job_tags_from_slurm_environment() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1"}
    tags = job_tags(env, gpu_model="NVIDIA H100 80GB HBM3")
    assert tags == {"dist.world_size": "8", "gpu_model": "NVIDIA H100 80GB HBM3", "slurm.job_id": "4242",
                    "slurm.array_job_id": "4240", "slurm.array_task_id": "2", "slurm.nodelist": "gpu[01-02]"}
    assert job_tags({}, gpu_model="none") == {"dist.world_size": "1", "gpu_model": "none"}
