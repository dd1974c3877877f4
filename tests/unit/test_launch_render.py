"""Rendered sbatch scripts: byte-identical to tests/reference/ for fixed configs.

The configs are the shipped ones (conf/launcher/slurm.yaml, cluster_h100.yaml,
conf/train.yaml ...) composed by the same code `imaging submit` runs, with
fixed paths. After an intended template change, regenerate with
``IMAGING_UPDATE_REFERENCE=1 pytest tests/unit/test_launch_render.py`` and
review the diff of tests/reference/.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from imaging.jobenv import port_from_job_id
from imaging.launch.render import JobSpec, LauncherConfigError, array_spec, render, tasks_per_node
from imaging.launch.submit import prepare, split_overrides

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
PROJECT = Path("/project")
DATA = ["paths.root_dir=/project", "data.dataset_dir=/project/demo/dataset"]
CASES: dict[str, tuple[str, list[str]]] = {
    "train_cpu.sbatch": ("train", ["experiment=demo_seg", *DATA, "launcher=slurm", "launcher.tasks_per_node=2",
                                    "launcher.cpus_per_task=1", "launcher.time=00:30:00"]),
    "train_h100.sbatch": ("train", ["experiment=demo_seg", *DATA, "trainer.max_epochs=300", "launcher=cluster_h100",
                                     "launcher.nodes=4", "launcher.container=/proj/images/imaging.sif"]),
    "infer_array.sbatch": ("infer", ["model=models:/demo_seg@champion", "input=/project/pacs", "output_dir=/project/pred",
                                      "paths.root_dir=/project", "launcher=slurm", "launcher.array_tasks=3",
                                      "launcher.array_throttle=2", "launcher.partition=cpu"]),
    "ingest.sbatch": ("ingest", ["input_dir=/project/pacs", "output_dir=/project/dataset", "demo_key=true",
                                  "paths.root_dir=/project", "launcher=slurm", "launcher.cpus_per_task=8",
                                  "launcher.mem=32G", "launcher.account=proj-1"]),
}


# The run dir ends in the config hash (imaging/plan/identity.py), which changes with any
# shipped default: references hold a placeholder so a conf change does not churn them.
_CFG_HASH = re.compile(r"-cfg[0-9a-f]{8}\b")


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_matches_reference(name: str) -> None:
    kind, overrides = CASES[name]
    text = _CFG_HASH.sub("-cfg<hash>", prepare(kind, overrides, cwd=PROJECT).script)
    ref = REFERENCE / name
    if os.environ.get("IMAGING_UPDATE_REFERENCE"):
        ref.write_text(text)
    assert ref.is_file(), f"missing {ref}: run with IMAGING_UPDATE_REFERENCE=1 to create it"
    assert text == ref.read_text(), f"{name} differs from {ref} (IMAGING_UPDATE_REFERENCE=1 regenerates it)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_is_valid_bash(name: str) -> None:
    kind, overrides = CASES[name]
    text = prepare(kind, overrides, cwd=PROJECT).script
    proc = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_train_script_contents() -> None:
    text = prepare("train", CASES["train_h100.sbatch"][1], cwd=PROJECT).script
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert "--nodes=4" in directives and "--ntasks-per-node=4" in directives and "--gpus-per-node=4" in directives
    assert "--signal=B:USR1@600" in directives and "--requeue" in directives and "--open-mode=append" in directives
    run_dir = "/project/runs/demo_seg/unet-fold0-seed0-cfg"
    assert any(re.fullmatch(f"--output={run_dir}[0-9a-f]{{8}}/slurm/slurm-%j.out", d) for d in directives)
    assert 'MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)' in text
    assert "MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 10000 ))" in text
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in text and "export NCCL_ASYNC" not in text
    cmd = next(line for line in text.splitlines() if line.startswith("srun "))
    assert re.match(re.escape('srun --cpus-per-task="${SLURM_CPUS_PER_TASK}" --kill-on-bad-exit=1 apptainer exec --nv ')
                    + f"--bind {run_dir}[0-9a-f]{{8}},/project,/proj,/scratch "
                    "/proj/images/imaging.sif imaging train experiment=demo_seg", cmd)
    assert "trainer.resume=auto" in cmd and "tracking.uri=http://mlflow.example.internal:5000" in cmd
    # Launcher values stay with the submitter; the job only learns which launcher it runs under.
    assert [w for w in cmd.split() if "launcher" in w] == ["launcher=cluster_h100"]


def test_rendezvous_port_is_below_the_ephemeral_range() -> None:
    text = prepare("train", CASES["train_cpu.sbatch"][1], cwd=PROJECT).script
    line = next(ln for ln in text.splitlines() if ln.startswith("MASTER_PORT="))
    for job_id in (1, 9999, 10000, 32767, 123456789, 4294967295):
        out = subprocess.run(["bash", "-c", f"SLURM_JOB_ID={job_id}; {line}; echo $MASTER_PORT"],
                             capture_output=True, text=True, check=True).stdout
        port = int(out)
        assert 1024 < port < 32768 and port == port_from_job_id(job_id), (job_id, port)


def _section(script: str, start: str, end: str) -> str:
    return script[script.index(start):script.index(end)]


@pytest.mark.parametrize("signals", [0, 1, 3])
def test_wait_loop_records_sruns_exit_code_not_the_traps(signals: int, tmp_path: Path) -> None:
    """The script's own wait loop, with a stand-in for srun that exits 7 while USR1s arrive."""
    script = prepare("train", CASES["train_cpu.sbatch"][1], cwd=PROJECT).script
    loop = _section(script, "srun_pid=$!", 'echo "[imaging] tasks finished')
    kills = "kill -USR1 $$; sleep 0.2; " * signals
    body = (f"set -u\nEXIT_PREEMPTED=3\nIMAGING_PREEMPT_MARKER={tmp_path / 'none'}\n"
            f"trap 'echo trapped' USR1\n( sleep 0.3; {kills}) &\n"
            f"bash -c 'sleep {0.5 + 0.2 * signals}; exit 7' &\n{loop}echo rc=$rc\n")
    proc = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)
    assert proc.stdout.count("trapped") == signals and proc.stdout.strip().endswith("rc=7"), proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize(("srun_rc", "marker", "expected"), [
    (143, True, 3),    # rank 1 exited 3 first, --kill-on-bad-exit killed rank 0 after it left the marker
    (3, True, 3),
    (143, False, 143),  # killed without a clean stop: stays a failure
    (0, True, 0),
])
def test_preempt_marker_turns_a_killed_clean_stop_into_exit_3(srun_rc: int, marker: bool, expected: int,
                                                              tmp_path: Path) -> None:
    script = prepare("train", CASES["train_cpu.sbatch"][1], cwd=PROJECT).script
    loop = _section(script, "srun_pid=$!", 'echo "[imaging] tasks finished')
    mark = tmp_path / "preempted-42"
    if marker:
        mark.write_text("3\n")
    body = (f"set -u\nEXIT_PREEMPTED=3\nIMAGING_PREEMPT_MARKER={mark}\n"
            f"bash -c 'exit {srun_rc}' &\n{loop}echo rc=$rc\n")
    proc = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip().endswith(f"rc={expected}") and proc.stderr == "", proc.stdout + proc.stderr


def _run_should_requeue(script: str, rc: int, requeued: int | None, warned: int, tmp: Path,
                        slurm_restarts: int = 0) -> bool:
    """Run the script's own `requeues_done` + `should_requeue` bash functions (the requeue bound) for real.

    ``requeued``: what our counter file says (None: no file yet). ``SLURM_RESTART_COUNT``
    is set too, to show it is not what counts.
    """
    funcs = _section(script, "requeues_done() {", "# --signal=B")
    consts = "\n".join(re.findall(r"^(?:MAX_REQUEUES|EXIT_PREEMPTED)=\d+$", script, re.M))
    counter = tmp / "requeues-42"
    if requeued is not None:
        counter.write_text(f"{requeued}\n")
    env = {"PATH": os.environ["PATH"], "SLURM_RESTART_COUNT": str(slurm_restarts)}
    proc = subprocess.run(["bash", "-c", f"set -u\n{consts}\nREQUEUE_FILE={counter}\n{funcs}\n"
                                         f"should_requeue {rc} {warned}"], env=env, capture_output=True, text=True)
    assert proc.stderr == ""
    return proc.returncode == 0


@pytest.mark.parametrize(("rc", "restarts", "warned", "expected"), [
    (3, None, 1, True),    # first time-limit warning of a fresh job (no counter file yet)
    (3, 0, 1, True),
    (3, 1, 1, True),
    (3, 2, 1, False),      # max_requeues=2 used up: stop, do not loop forever
    (3, 7, 1, False),
    (3, 0, 0, False),      # stopped for TERM: scancel means stop; preemption requeues by itself
    (0, 0, 1, False),      # finished before the warning took effect
    (1, 0, 1, False),      # a genuine failure is never requeued
    (2, 0, 0, False),      # config error
    (137, 0, 0, False),    # killed (OOM, scancel)
])
def test_requeue_bound(rc: int, restarts: int | None, warned: int, expected: bool, tmp_path: Path) -> None:
    _, overrides = CASES["train_cpu.sbatch"]
    script = prepare("train", [*overrides, "launcher.max_requeues=2"], cwd=PROJECT).script
    assert _run_should_requeue(script, rc, restarts, warned, tmp_path) is expected


def test_slurms_own_requeues_do_not_use_up_ours(tmp_path: Path) -> None:
    """Preempted 5 times by Slurm (SLURM_RESTART_COUNT=5), never requeued by us: still requeues."""
    _, overrides = CASES["train_cpu.sbatch"]
    script = prepare("train", [*overrides, "launcher.max_requeues=2"], cwd=PROJECT).script
    assert _run_should_requeue(script, 3, None, 1, tmp_path, slurm_restarts=5) is True
    assert _run_should_requeue(script, 3, 2, 1, tmp_path, slurm_restarts=0) is False


def test_infer_array_shards_are_explicit() -> None:
    text = prepare("infer", CASES["infer_array.sbatch"][1], cwd=PROJECT).script
    assert "#SBATCH --array=0-2%2" in text
    assert "shard.index=${SLURM_ARRAY_TASK_ID} shard.count=3 shard.offset=0" in text
    assert "model_uri=models:/demo_seg@champion" in text
    # Re-submitting one shard keeps the same split (count stays 3).
    again = prepare("infer", [*CASES["infer_array.sbatch"][1], "launcher.array_indices=1"], cwd=PROJECT).script
    assert "#SBATCH --array=1%2" in again and "shard.count=3" in again


def test_split_overrides() -> None:
    launcher, job = split_overrides(["launcher=slurm", "launcher.nodes=2", "+launcher.x=1", "trainer.lr=1",
                                     "launcherish=1", "model=unet"])
    assert launcher == ["launcher=slurm", "launcher.nodes=2", "+launcher.x=1"]
    assert job == ["trainer.lr=1", "launcherish=1", "model=unet"]


def test_tasks_and_array_spec() -> None:
    assert tasks_per_node({"gpus_per_node": 4}) == 4
    assert tasks_per_node({"gpus_per_node": 0}) == 1
    assert tasks_per_node({"gpus_per_node": 4, "tasks_per_node": 2}) == 2
    assert array_spec({"array_tasks": 1}) == "0"
    assert array_spec({"array_tasks": 8, "array_throttle": 3}) == "0-7%3"
    assert array_spec({"array_tasks": 8, "array_indices": "2,5"}) == "2,5"


@pytest.mark.parametrize(("override", "message"), [
    ("launcher.time=2h", "launcher.time='2h'"),
    ("launcher.nodes=0", "launcher.nodes must be >= 1"),
    ("launcher.gpus_per_node=-1", "launcher.gpus_per_node=-1"),
    ("launcher=local", "needs a Slurm launcher"),
])
def test_bad_launcher_values_are_named(override: str, message: str) -> None:
    base = [o for o in CASES["train_cpu.sbatch"][1] if not o.startswith("launcher.")]
    with pytest.raises(LauncherConfigError, match=re.escape(message)):
        prepare("train", [*base, override], cwd=PROJECT)


def test_unknown_job_kind() -> None:
    with pytest.raises(LauncherConfigError, match="unknown job 'evaluate'"):
        prepare("evaluate", [], cwd=PROJECT)
    with pytest.raises(LauncherConfigError, match="unknown job kind"):
        render({"time": "1"}, JobSpec("x", [], PROJECT, PROJECT, "x", PROJECT))
