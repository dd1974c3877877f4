"""`imaging evaluate ... launcher=slurm` (issue 31): the roles of a federation on Slurm (a
SuperLink job, one SuperNode job per site) as `python -m imaging.launch.federate` renders
them, the SuperLink job ending with the command that logs the result. The scripts are
byte-identical to tests/reference/evaluate_*.sbatch for a fixed config (regenerate after an
intended template change with ``IMAGING_UPDATE_REFERENCE=1`` and review the diff), valid
bash, and the finishing command found in the script, run for real, logs a result into
MLflow as a local evaluation does.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from imaging.launch.federate import FederationJob, evaluation_jobs
from imaging.launch.render import LauncherConfigError
from tests.fixtures.train_data import CONF_DIR, make_train_dataset
from tests.unit.test_launch_federate import node_config_written

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
RUN_DIR = Path("/project/runs/evaluation/central-v2-all")
DATASETS = {"A": Path("/hospital-a/dataset"), "B": Path("/hospital-b/data set")}
BASE = ["experiment=demo_federated", "paths.root_dir=/project", "model_uri=models:/central@champion",
        f"run_dir={RUN_DIR}", "federation.sites=[A,B]", "federation.synthetic=null", "launcher=slurm",
        "launcher.time=01:00:00", "launcher.partition=cpu"]


def _compose(*overrides: str):  # -> DictConfig
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


def _jobs(*extra: str) -> dict[str, FederationJob]:
    from imaging.pipelines.evaluate import finish_command

    cfg = _compose(*BASE, *extra)
    jobs = evaluation_jobs(cfg, DATASETS, finish=finish_command(cfg, RUN_DIR, "central", "2"), workdir=Path("/project"))
    return {job.site or job.role: job for job in jobs}


@pytest.fixture(scope="module")
def plain() -> dict[str, FederationJob]:
    return _jobs()


def _command(script: str, exe: str) -> list[str]:
    """The words of the ``exe`` command in the script (backslash continuations joined)."""
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.lstrip().startswith(exe + " "))
    return shlex.split(line.rstrip(" &"))


@pytest.mark.parametrize(("name", "key"), [("evaluate_superlink.sbatch", "superlink"),
                                           ("evaluate_supernode.sbatch", "B")])
def test_rendered_scripts_match_reference(plain: dict[str, FederationJob], name: str, key: str) -> None:
    text = plain[key].script
    ref = REFERENCE / name
    if os.environ.get("IMAGING_UPDATE_REFERENCE"):
        ref.write_text(text)
    assert ref.is_file(), f"missing {ref}: run with IMAGING_UPDATE_REFERENCE=1 to create it"
    assert text == ref.read_text(), f"{name} differs from {ref} (IMAGING_UPDATE_REFERENCE=1 regenerates it)"


def test_the_same_roles_as_a_federation_and_the_result_logged_at_the_end(plain: dict[str, FederationJob]) -> None:
    assert sorted(plain) == ["A", "B", "superlink"]
    for job in plain.values():
        proc = subprocess.run(["bash", "-n"], input=job.script, text=True, capture_output=True)
        assert proc.returncode == 0, (job.script_path, proc.stderr)
    link = plain["superlink"].script
    assert plain["superlink"].script_path == RUN_DIR / "slurm" / "evaluate_superlink.sbatch"
    assert "#SBATCH --job-name=eval-central-v2-all-superlink" in link
    run = _command(link, "flwr")
    assert run[run.index("--run-config") + 1] == f'config="{RUN_DIR}/federate.yaml"'
    # After `flwr run`, and only when it succeeded: the pinned version's result into MLflow.
    assert link.index("flwr run") < link.index('if [ "${rc}" -eq 0 ]; then') < link.index("finish_only=true")
    assert _command(link, "imaging") == ["imaging", "evaluate", "model=models:/central/2", f"run_dir={RUN_DIR}",
                                         "finish_only=true", "paths.root_dir=/project"]
    assert "/hospital-" not in link, "the coordinator's job names no site's folder"
    for site, dataset in DATASETS.items():
        words = _command(plain[site].script, "flower-supernode")
        cfg = words[words.index("--node-config") + 1]
        assert cfg == f"{RUN_DIR}/sites/{site}/node-config.toml"
        assert node_config_written(plain[site].script) == {"site": site, "dataset-dir": str(dataset),
                                                           "work-dir": f"{RUN_DIR}/sites/{site}"}
        assert "finish_only" not in plain[site].script
        assert plain[site].script_path == RUN_DIR / "slurm" / f"evaluate_supernode_{site}.sbatch"


def test_a_container_wraps_the_finishing_command_too() -> None:
    link = _jobs("launcher.container=/images/imaging.sif", "launcher.imaging_cmd=python -m imaging")["superlink"].script
    line = next(ln for ln in link.splitlines() if "finish_only=true" in ln)
    assert line.strip().startswith("apptainer exec --nv --bind ") and "/images/imaging.sif python -m imaging evaluate " \
        "model=models:/central/2" in line


def test_a_local_launcher_is_refused_by_the_slurm_renderer() -> None:
    cfg = _compose(*[o for o in BASE if not o.startswith("launcher")])
    with pytest.raises(LauncherConfigError, match="launcher=local"):
        evaluation_jobs(cfg, DATASETS, finish="true", workdir=Path("/project"))


def _register(root: Path) -> str:
    """A tiny random-weights segmentation model registered as central@champion (what the jobs
    need is a registered bundle); returns the tracking URI."""
    import mlflow
    import torch

    from imaging.models.registry import build_network
    from imaging.tracking.registry import register_model
    from imaging.tracking.store import activate
    from tests.unit.test_evaluate_selection import LABELS, TINY_UNET, preprocessing

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    activate(uri)
    client = mlflow.MlflowClient(uri)
    client.create_experiment("central", artifact_location=(root / "mlflow" / "artifacts").as_uri())
    mlflow.set_experiment("central")
    torch.manual_seed(0)
    with mlflow.start_run(run_name="random-weights"):
        register_model(build_network(TINY_UNET), network_config=TINY_UNET, preprocessing=preprocessing(),
                       labels=LABELS, task="segmentation", name="central", alias="champion")
    return uri


def test_dry_run_writes_the_jobs_and_their_finishing_command_logs_the_result(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline with launcher=slurm dry_run=true: model files, request, server config and
    scripts in the run dir, nothing submitted; then the finishing command taken from the
    SuperLink script, run as the job runs it (with the ServerApp's result in place), logs
    one MLflow run and tags the pinned version."""
    import imaging.pipelines.evaluate as pipeline
    from imaging.federated.evaluation import EvalRequest

    root = tmp_path / "root"
    (root).mkdir()
    (root / ".imaging").write_text("")
    uri = _register(root)
    sites = {s: make_train_dataset(tmp_path / s, subjects=2, shape=(16, 16, 8), seed=i) for i, s in enumerate("AB")}
    monkeypatch.setenv("IMAGING_ROOT", str(root))
    monkeypatch.chdir(root)
    cfg = _compose("experiment=demo_federated", f"paths.root_dir={root}", "model_uri=models:/central@champion",
                   "federation.sites=[A,B]", "federation.synthetic=null", "launcher=slurm", "dry_run=true",
                   *(f"+federation.datasets.{s}={d}" for s, d in sites.items()))
    out = pipeline.run(cfg)
    assert out.jobs == {"superlink": "dry-run", "supernode:A": "dry-run", "supernode:B": "dry-run"}
    run_dir = root / "runs" / "evaluation" / "central-v1-all"
    assert out.run_dir == run_dir and out.run_id is None
    script = Path(out.scripts["superlink"]).read_text()
    assert Path(out.scripts["supernode:B"]).read_text().count(str(sites["B"])) == 1
    server_cfg = (run_dir / "federate.yaml").read_text()
    assert "evaluation:" in server_cfg and str(sites["A"]) not in server_cfg and str(sites["B"]) not in server_cfg
    assert EvalRequest.from_json((run_dir / "model" / "request.json").read_text()).labels[1] == "liver"
    assert not (run_dir / "evaluation.json").exists()
    # What the ServerApp would have written once both sites answered.
    result = {"model_uri": "models:/central/1", "split": "all", "sites": ["A", "B"], "answered": ["A", "B"],
              "gaps": [], "no_cases": [], "errors": {}, "labels": ["liver", "spleen", "kidney"],
              "catalog_sha256": {"A": "a" * 64, "B": "b" * 64},
              "per_site": {"A": {"n_cases": 2.0, "n_liver": 2.0, "dice_liver": 0.25},
                           "B": {"n_cases": 2.0, "n_liver": 2.0, "dice_liver": 0.75}},
              "pooled": {"n_cases": 4.0, "n_liver": 4.0, "dice_liver": 0.5, "dice_mean": 0.5}, "received": []}
    (run_dir / "evaluation.json").write_text(json.dumps(result))
    words = _command(script, "imaging")
    proc = subprocess.run([sys.executable, "-m", "imaging", *words[1:]], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "IMAGING_ROOT": str(root)}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("evaluation")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "central-v1-all" and run.data.metrics["site.B.dice_liver"] == 0.75
    assert run.data.tags["model.requested"] == "models:/central@champion"
    version = client.get_model_version("central", "1")
    assert version.tags["eval.pooled.dice_liver"] == "0.5000" and version.tags["eval.pooled.sites"] == "A,B"


def test_finish_only_without_a_result_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "imaging", "evaluate", "model=models:/central/1",
                           f"run_dir={tmp_path}", "finish_only=true", f"paths.root_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "IMAGING_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and "no evaluation.json" in proc.stdout + proc.stderr
