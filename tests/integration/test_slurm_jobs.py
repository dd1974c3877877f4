"""`imaging submit` / `imaging status` on a real Slurm (slurmctld + slurmd + munged from the
``slurm_cluster`` fixture) with a real ``mlflow server``: DDP training with 2 tasks,
preemption -> checkpoint -> requeue -> resume, inference arrays, cancel + re-submit.

Jobs are tiny (demo_seg, a few batches, the 2-subject synthetic dataset). Nothing
waits a fixed time: job states are polled with generous timeouts. The one
ordering the preemption test relies on is that a signal sent after the first
checkpoint reaches a 30-epoch job long before its last epoch.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from imaging.jobenv import parse_hostlist
from imaging.launch.slurm import TaskState, job_states
from tests.fixtures.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.integration]
JOB_TIMEOUT_S = 900


# ------------------------------------------------------------------ helpers
def launcher_overrides(root: Path, uri: str, **extra: Any) -> list[str]:
    ov = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.time=00:30:00",
          f"launcher.imaging_cmd={sys.executable} -m imaging", f"launcher.mlflow_tracking_uri={uri}",
          f"launcher.jobs_index_dir={root / 'index'}", "+launcher.env.OMP_NUM_THREADS=1"]
    return ov + [f"launcher.{k}={v}" for k, v in extra.items()]


def train_overrides(dataset: Path, root: Path, experiment: str, **extra: Any) -> list[str]:
    ov = ["experiment=demo_seg", "debug=fast", f"data.dataset_dir={dataset}", "data.split.folds=2",
          "data.cache=none", "data.samples_per_volume=1", f"paths.root_dir={root}",
          f"tracking.experiment_name={experiment}", "tracking.review_cases=0"]
    return ov + [f"{k}={v}" for k, v in extra.items()]


def imaging(cluster: SlurmCluster, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = cluster.env | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "imaging", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def submit(cluster: SlurmCluster, cwd: Path, kind: str, overrides: list[str]) -> dict[str, Any]:
    """`imaging submit KIND ...` for real; returns the job record it wrote."""
    proc = imaging(cluster, cwd, "submit", kind, *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split("job ", 1)[1].split()[0]
    assert job_id.isdigit(), proc.stdout
    index = next(Path(o.split("=", 1)[1]) for o in overrides if o.startswith("launcher.jobs_index_dir="))
    record = json.loads((index / f"{job_id}.json").read_text())
    assert record["job_id"] == job_id and record["script"] in proc.stdout and "logs" in proc.stdout
    return record


def wait_until(what: str, ok: Callable[[], Any], cluster: SlurmCluster, timeout: float = JOB_TIMEOUT_S,
               log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-4000:] if log and log.is_file() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}\n{cluster.logs()}")


def wait_finished(cluster: SlurmCluster, job_id: str, log: Path | None = None) -> list[TaskState]:
    """Poll until every task of the job is in a final state (a requeued job is not)."""
    def done() -> list[TaskState] | None:
        states = job_states(job_id, cluster.env)
        return states if states and all(s.finished for s in states) else None
    return wait_until(f"job {job_id} to finish", done, cluster, log=log)  # type: ignore[no-any-return]


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def dataset(ingested_dataset: Any) -> Any:
    return ingested_dataset


@pytest.fixture(scope="module")
def ddp_job(slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-node x 1-task (gloo DDP) training job that registers its model; shared by the inference tests."""
    root = tmp_path_factory.mktemp("slurm-ddp")
    record = submit(slurm_cluster, root, "train", [
        *train_overrides(dataset.dataset, root, "slurm_ddp", **{"trainer.max_epochs": 2, "trainer.val_every": 1,
                                                                 "tracking.register": "true"}),
        *launcher_overrides(root, mlflow_server.uri, nodes=2, tasks_per_node=1),
    ])
    log = Path(record["log"].replace("%j", record["job_id"]))
    states = wait_finished(slurm_cluster, record["job_id"], log)
    return {"record": record, "states": states, "log": log, "root": root}


# ------------------------------------------------------------------ tests
def test_cluster_is_up_and_hostlists_agree_with_scontrol(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.run("sinfo", "-h", "-o", "%T").stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")
    # Forms every Slurm accepts (22.05 rejects text after a bracket; the parser also reads it).
    for nodelist in ["vm", "gpu[012-014,020],login1", "a[8-10]", "x-[001-003]", "n1,n[3-4],gpu[07-08]"]:
        hosts = slurm_cluster.run("scontrol", "show", "hostnames", nodelist).stdout.split()
        assert parse_hostlist(nodelist) == hosts, nodelist


def test_ddp_training_job_logs_one_mlflow_run(ddp_job: dict[str, Any], mlflow_server: Any,
                                              slurm_cluster: SlurmCluster) -> None:
    record, log = ddp_job["record"], ddp_job["log"]
    (state,) = ddp_job["states"]
    text = log.read_text()
    assert state.state == "COMPLETED", text[-3000:]
    assert "rank 0/2 joined the gloo process group" in text and "rank 1/2 joined the gloo process group" in text
    ran_on = re.search(r"attempt 1 on (\S+) at", text)
    assert ran_on and sorted(parse_hostlist(ran_on.group(1))) == sorted(slurm_cluster.node_names)  # 2 nodes
    run_dir = Path(record["run_dir"])
    assert Path(record["script"]) == run_dir / "slurm" / "train.sbatch" and log.parent == run_dir / "slurm"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("slurm_ddp")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not one per rank
    assert runs[0].info.status == "FINISHED"
    assert epochs_logged(client, run_id) == [1, 2]
    # Where it ran, from Slurm's side (the submitter's record and sinfo), not from the job's own code.
    tags, params = runs[0].data.tags, runs[0].data.params
    assert tags["slurm.job_id"] == record["job_id"] and tags["dist.world_size"] == "2"
    assert sorted(parse_hostlist(tags["slurm.nodelist"])) == sorted(slurm_cluster.node_names)
    assert tags["gpu_model"] == "none" and params["launcher.name"] == "slurm"
    # `imaging status` joins the Slurm side and the MLflow side.
    proc = imaging(slurm_cluster, ddp_job["root"], "status", record["job_id"], "--json",
                   "--index", str(ddp_job["root"] / "index"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["slurm"][0]["state"] == "COMPLETED" and info["slurm_source"] == "scontrol"
    assert info["mlflow"]["run_id"] == run_id and info["mlflow"]["status"] == "FINISHED"
    assert info["mlflow"]["epochs_logged"] == [1, 2]
    human = imaging(slurm_cluster, ddp_job["root"], "status", record["job_id"],
                    "--index", str(ddp_job["root"] / "index"))
    assert "COMPLETED" in human.stdout and run_id in human.stdout


def test_preemption_checkpoints_requeues_and_resumes_into_the_same_run(
        slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any, tmp_path: Path) -> None:
    epochs = 30
    record = submit(slurm_cluster, tmp_path, "train", [
        *train_overrides(dataset.dataset, tmp_path, "slurm_preempt",
                         **{"trainer.max_epochs": epochs, "trainer.val_every": 10}),
        *launcher_overrides(tmp_path, mlflow_server.uri, tasks_per_node=2, max_requeues=2),
    ])
    job_id, run_dir = record["job_id"], Path(record["run_dir"])
    log = Path(record["log"].replace("%j", job_id))
    last = run_dir / "checkpoints" / "last.pt"
    wait_until("the first checkpoint", last.is_file, slurm_cluster, log=log)
    # What Slurm does before the time limit (--signal=B:USR1@LEAD): signal the batch shell only.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    (state,) = wait_finished(slurm_cluster, job_id, log)
    text = log.read_text()
    assert state.state == "COMPLETED", text[-3000:]
    assert state.restarts == 1
    assert "received SIGUSR1" in text and "tasks finished with exit code 3" in text
    assert "requeueing (restart 1 of at most 2)" in text
    assert (run_dir / "slurm" / f"requeues-{job_id}").read_text().strip() == "1"  # our own counter
    assert f"job {job_id} attempt 2" in text and "resuming from" in text
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("slurm_preempt").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    # Continuous: every epoch exactly once, across both attempts.
    assert epochs_logged(client, runs[0].info.run_id) == list(range(1, epochs + 1))


def test_scancel_stops_for_good(slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any,
                                tmp_path: Path) -> None:
    """`scancel` sends TERM: the tasks checkpoint, but the job must not requeue itself."""
    record = submit(slurm_cluster, tmp_path, "train", [
        *train_overrides(dataset.dataset, tmp_path, "slurm_cancel",
                         **{"trainer.max_epochs": 30, "trainer.val_every": 10}),
        *launcher_overrides(tmp_path, mlflow_server.uri, tasks_per_node=2),
    ])
    job_id, run_dir = record["job_id"], Path(record["run_dir"])
    log = Path(record["log"].replace("%j", job_id))
    wait_until("the first checkpoint", (run_dir / "checkpoints" / "last.pt").is_file, slurm_cluster, log=log)
    slurm_cluster.run("scancel", job_id)
    wait_until("the batch script to end", lambda: "tasks finished with exit code" in log.read_text(),
               slurm_cluster, log=log)
    (state,) = wait_finished(slurm_cluster, job_id, log)
    text = log.read_text()
    assert state.state == "CANCELLED" and state.restarts == 0, text[-3000:]
    assert "received SIGTERM" in text and "after SIGTERM: not requeueing" in text
    assert "requeueing (restart" not in text and f"job {job_id} attempt 2" not in text


def test_genuine_failure_is_not_requeued(slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any,
                                         tmp_path: Path) -> None:
    # A config `imaging submit` accepts (catalog and labels check out) but the job cannot run:
    # the volumes themselves are corrupt, which only reading them finds. The training fails
    # (not exit 3) -> FAILED, no requeue. (A missing dataset or an absent GPU is refused before sbatch.)
    broken = tmp_path / "broken-dataset"
    shutil.copytree(dataset.dataset, broken)
    for vol in broken.glob("volumes/*.nii.gz"):
        vol.write_bytes(b"not a NIfTI file")
    record = submit(slurm_cluster, tmp_path, "train", [
        *train_overrides(broken, tmp_path, "slurm_fail"),
        *launcher_overrides(tmp_path, mlflow_server.uri),
    ])
    log = Path(record["log"].replace("%j", record["job_id"]))
    (state,) = wait_finished(slurm_cluster, record["job_id"], log)
    text = log.read_text()
    assert state.state == "FAILED" and state.restarts == 0, text[-2000:]
    code = re.search(r"tasks finished with exit code (\d+)", text)
    assert code is not None and int(code.group(1)) not in (0, 3)
    assert "requeueing (restart" not in text and "attempt 2" not in text


def _infer_overrides(ddp_job: dict[str, Any], dataset: Any, out: Path) -> list[str]:
    return ["model=models:/slurm_ddp@candidate", f"input={dataset.dataset}", f"private_dir={dataset.private}",
            f"output_dir={out}", "demo_key=true", "overlay=false", f"paths.root_dir={out.parent}"]


def _shard_keys(out: Path) -> dict[int, list[str]]:
    shards = {}
    for path in sorted(out.glob("report.shard-*-of-*.csv")):
        index = int(path.name.split("-")[1])
        with path.open() as fh:
            shards[index] = [row["series_key"] for row in csv.DictReader(fh)]
    return shards


def _markers(out: Path) -> list[str]:
    """Series with a final marker: done/ (predicted) or errors/ (recorded failure), never both."""
    done = sorted(p.stem for p in (out / "done").glob("*.json"))
    errors = sorted(p.stem for p in (out / "errors").glob("*.json"))
    assert done and not set(done) & set(errors)
    return sorted(done + errors)


def _merged_keys(out: Path) -> list[str]:
    with (out / "report.csv").open() as fh:
        return [row["series_key"] for row in csv.DictReader(fh)]


def test_inference_array_covers_every_series_once(slurm_cluster: SlurmCluster, mlflow_server: Any,
                                                  ddp_job: dict[str, Any], dataset: Any, tmp_path: Path) -> None:
    assert ddp_job["states"][0].state == "COMPLETED"
    out = tmp_path / "pred"
    record = submit(slurm_cluster, tmp_path, "infer", [
        *_infer_overrides(ddp_job, dataset, out),
        *launcher_overrides(tmp_path, mlflow_server.uri, array_tasks=3),
    ])
    assert record["array"] == "0-2"
    states = wait_finished(slurm_cluster, record["job_id"])
    logs = {i: Path(record["log"].replace("%A", record["job_id"]).replace("%a", str(i))) for i in range(3)}
    assert sorted(s.job_id for s in states) == [f"{record['job_id']}_{i}" for i in range(3)]
    assert all(s.state == "COMPLETED" for s in states), {i: p.read_text()[-1500:] for i, p in logs.items()}
    shards = _shard_keys(out)
    assert sorted(shards) == [0, 1, 2]  # every task wrote its shard report, even one with no series
    every = [k for keys in shards.values() for k in keys]
    # The fixture's CT series (fewer since ingest refuses uneven stacks): more than one task has work.
    assert len(every) >= 2 and sum(1 for keys in shards.values() if keys) >= 2
    assert len(every) == len(set(every))  # no series in two shards
    assert sorted(_merged_keys(out)) == sorted(every)  # merged report: each series once
    assert _markers(out) == sorted(every)
    for i, path in logs.items():
        assert f"shard {i} of 3" in path.read_text()
    proc = imaging(slurm_cluster, tmp_path, "status", record["job_id"], "--json", "--index", str(tmp_path / "index"))
    info = json.loads(proc.stdout)
    assert sorted((t["job_id"], t["state"]) for t in info["slurm"]) == \
        [(f"{record['job_id']}_{i}", "COMPLETED") for i in range(3)]
    assert info["submission"]["array"] == "0-2"
    assert info["infer_done"] == sum(1 for _ in (out / "done").glob("*.json"))


def test_cancelled_array_task_resubmitted_without_duplicates(slurm_cluster: SlurmCluster, mlflow_server: Any,
                                                            ddp_job: dict[str, Any], dataset: Any,
                                                            tmp_path: Path) -> None:
    assert ddp_job["states"][0].state == "COMPLETED"
    out = tmp_path / "pred"
    # Throttle 1: task 1 waits while task 0 runs, so it can be cancelled before it starts.
    record = submit(slurm_cluster, tmp_path, "infer", [
        *_infer_overrides(ddp_job, dataset, out),
        *launcher_overrides(tmp_path, mlflow_server.uri, array_tasks=2, array_throttle=1),
    ])
    job_id = record["job_id"]
    slurm_cluster.run("scancel", f"{job_id}_1")
    states = {s.job_id: s for s in wait_finished(slurm_cluster, job_id)}
    assert states[f"{job_id}_0"].state == "COMPLETED"
    # A task cancelled before the array was split has no record of its own left.
    assert f"{job_id}_1" not in states or states[f"{job_id}_1"].state == "CANCELLED"
    shard0 = set(_shard_keys(out)[0])
    assert set(_markers(out)) == shard0  # shard 1 never ran
    # Re-submit only the lost shard; the split (shard count 2) stays the same.
    again = submit(slurm_cluster, tmp_path, "infer", [
        *_infer_overrides(ddp_job, dataset, out),
        *launcher_overrides(tmp_path, mlflow_server.uri, array_tasks=2, array_indices=1),
    ])
    (state,) = wait_finished(slurm_cluster, again["job_id"])
    assert state.state == "COMPLETED" and state.job_id == f"{again['job_id']}_1"
    shards = _shard_keys(out)
    assert set(shards[0]) == shard0 and not set(shards[1]) & shard0
    merged = _merged_keys(out)
    assert len(merged) == len(set(merged)) == len(shard0) + len(shards[1])  # nothing lost, nothing twice
    assert _markers(out) == sorted(merged)
    # Re-submitting the whole array now finds everything done and predicts nothing again.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    full = submit(slurm_cluster, tmp_path, "infer", [
        *_infer_overrides(ddp_job, dataset, out),
        *launcher_overrides(tmp_path, mlflow_server.uri, array_tasks=2),
    ])
    assert all(s.state == "COMPLETED" for s in wait_finished(slurm_cluster, full["job_id"]))
    assert {p: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")} == mtimes


# ------------------------------------------------ the rendered scripts with a probe as the task
# `launcher.imaging_cmd` points at this probe instead of `imaging`: the real scripts run on the
# real cluster in seconds, and what each task sees (CPUs, rank, port) is checked from outside.
PROBE = '''\
import json, os, signal, sys, time
rank = int(os.environ["SLURM_PROCID"])
mode = os.environ.get("PROBE_MODE", "")
print("PROBE " + json.dumps({"kind": sys.argv[1], "rank": rank, "node": os.environ["SLURMD_NODENAME"],
      "cpus": sorted(os.sched_getaffinity(0)), "port": os.environ.get("MASTER_PORT"), "t": time.time()}), flush=True)
if mode == "kill-rank-1":
    if rank == 1:
        time.sleep(3)                          # (lets rank 0 print its line first)
        os.kill(os.getpid(), signal.SIGKILL)   # a rank dies (OOM killer, segfault)
    time.sleep(600)                            # the others would block in a collective
if mode == "fail-" + sys.argv[1]:
    sys.exit(1)
'''


def probe_overrides(root: Path, uri: str, **extra: Any) -> list[str]:
    probe = root / "probe.py"
    probe.write_text(PROBE)
    return [*launcher_overrides(root, uri, **extra), f"launcher.imaging_cmd={sys.executable} {probe}"]


def submit_here(cluster: SlurmCluster, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                *args: str) -> list[dict[str, Any]]:
    """`imaging submit ...` in this process (no interpreter start per job); returns the job records."""
    from imaging.apps.submit import main as submit_main

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.chdir(cwd)
    rc = submit_main(list(args))
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    index = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("launcher.jobs_index_dir="))
    return [json.loads((index / f"{job_id}.json").read_text())
            for _, job_id in re.findall(r"submitted (\w+) job (\d+)", out.out)]


def probe_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line.split("PROBE ", 1)[1]) for line in log.read_text().splitlines() if "PROBE " in line]


def test_each_rank_gets_its_own_cores_and_a_task_all_of_its_cpus(
        slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """task/affinity binds each task to its CPUs: two 1-CPU ranks on one node get different cores,
    and a 2-CPU ingest task gets both (srun --cpus-per-task; Slurm 22.05's srun would give it one)."""
    (train,) = submit_here(slurm_cluster, tmp_path, monkeypatch, capsys, "train",
                           *train_overrides(dataset.dataset, tmp_path, "slurm_probe"),
                           *probe_overrides(tmp_path, mlflow_server.uri, tasks_per_node=2, cpus_per_task=1))
    (ingest,) = submit_here(slurm_cluster, tmp_path, monkeypatch, capsys, "ingest",
                            f"input_dir={dataset.export}", f"output_dir={tmp_path / 'ds'}", "demo_key=true",
                            f"paths.root_dir={tmp_path}", *probe_overrides(tmp_path, mlflow_server.uri, cpus_per_task=2))
    logs = {}
    for rec in (train, ingest):
        logs[rec["kind"]] = Path(rec["log"].replace("%j", rec["job_id"]))
        (state,) = wait_finished(slurm_cluster, rec["job_id"], logs[rec["kind"]])
        assert state.state == "COMPLETED", logs[rec["kind"]].read_text()[-2000:]
    ranks = sorted(probe_lines(logs["train"]), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["node"] == ranks[1]["node"]
    assert all(len(r["cpus"]) == 1 for r in ranks) and ranks[0]["cpus"] != ranks[1]["cpus"], ranks
    port = int(ranks[0]["port"])
    assert port == 20000 + int(train["job_id"]) % 10000 and not 32768 <= port <= 60999
    (task,) = probe_lines(logs["ingest"])
    assert task["cpus"] == sorted(os.sched_getaffinity(0))[:2] and len(task["cpus"]) == 2, task


def test_one_dead_rank_ends_the_job_promptly(slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """srun --kill-on-bad-exit=1: rank 1 is SIGKILLed, rank 0 (asleep for 600 s, as if in a collective)
    is killed by Slurm at once, and the batch script reports srun's failure."""
    (rec,) = submit_here(slurm_cluster, tmp_path, monkeypatch, capsys, "train",
                         *train_overrides(dataset.dataset, tmp_path, "slurm_kill"),
                         *probe_overrides(tmp_path, mlflow_server.uri, tasks_per_node=2, cpus_per_task=1),
                         "+launcher.env.PROBE_MODE=kill-rank-1")
    log = Path(rec["log"].replace("%j", rec["job_id"]))
    wait_until("both ranks to start", lambda: log.is_file() and len(probe_lines(log)) == 2, slurm_cluster, log=log,
               timeout=300)
    started = time.monotonic()
    (state,) = wait_finished(slurm_cluster, rec["job_id"], log)
    ended_after = time.monotonic() - started
    text = log.read_text()
    assert state.state == "FAILED" and ended_after < 60, (ended_after, text[-2000:])
    code = re.search(r"tasks finished with exit code (\d+)", text)
    assert code is not None and int(code.group(1)) not in (0, 3), text[-2000:]
    assert "requeueing (restart" not in text


def test_pipeline_runs_ingest_train_infer_in_order_and_cancels_after_a_failure(
        slurm_cluster: SlurmCluster, mlflow_server: Any, dataset: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def pipeline(root: Path, *extra: str) -> list[dict[str, Any]]:
        root.mkdir()
        recs = submit_here(slurm_cluster, root, monkeypatch, capsys, "pipeline",
                           *probe_overrides(root, mlflow_server.uri), f"paths.root_dir={root}", *extra,
                           "ingest:", f"input_dir={dataset.export}", f"output_dir={root / 'ds'}", "demo_key=true",
                           "train:", "experiment=demo_seg", "tracking.experiment_name=slurm_chain",
                           "infer:", f"output_dir={root / 'pred'}", "demo_key=true", "launcher.array_tasks=1")
        assert [r["kind"] for r in recs] == ["ingest", "train", "infer"]
        return recs

    ok = pipeline(tmp_path / "ok")
    assert ok[1]["dependency"] == f"afterok:{ok[0]['job_id']}" and ok[2]["dependency"] == f"afterok:{ok[1]['job_id']}"
    times = []
    for rec in ok:
        states = wait_finished(slurm_cluster, rec["job_id"])
        assert all(s.state == "COMPLETED" for s in states), states
        log = Path(rec["log"].replace("%j", rec["job_id"]).replace("%A", rec["job_id"]).replace("%a", "0"))
        (first, *_) = probe_lines(log)
        assert first["kind"] == rec["kind"]
        times.append(first["t"])
    assert times == sorted(times)  # each job started only after the one before it succeeded
    failed = pipeline(tmp_path / "fail", "+launcher.env.PROBE_MODE=fail-ingest")
    states = [wait_finished(slurm_cluster, rec["job_id"]) for rec in failed]
    assert states[0][0].state == "FAILED"
    assert all(s.state == "CANCELLED" for st in states[1:] for s in st), states  # never left pending
