"""Real DDP on CPU (gloo): a 2-process run logs one MLflow run, and metrics over
an uneven validation split equal the single-process values."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient
from omegaconf import OmegaConf

from imaging.data.datasets import build_val_loader
from imaging.data.splits import split_by_subject
from imaging.data.transforms import build_inference_transforms
from imaging.engine.checkpoint import load_checkpoint
from imaging.engine.distributed import Dist, setup, teardown
from imaging.engine.loops import validate
from imaging.engine.metrics import SegMetricAccumulator
from imaging.jobenv import DistEnv
from imaging.models.registry import build_network
from imaging.plan.train import validate_config
from tests.fixtures.train_data import compose_train, make_train_dataset, tiny_train_overrides

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        target = torch.randint(0, 3, (1, 1, 8, 8, 4), generator=g)
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, torch.zeros_like(target))
        out.append((pred, target))
    out[2][1][out[2][1] == 2] = 0  # label 2 absent from case 3: it must not count there
    return out


def _reduce_worker(rank: int, port: int, world: int, queue: mp.Queue) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "LOCAL_RANK": str(rank)})
    d = setup("cpu", timeout_s=60)
    try:
        acc = SegMetricAccumulator(num_classes=3)
        for pred, target in _cases()[rank::world]:  # rank 0: 2 cases, rank 1: 1 case
            acc.add(pred, target)
        queue.put((rank, acc.reduce(d, {1: "a", 2: "b"})))
    finally:
        teardown(d)


def test_uneven_validation_split_reduces_like_one_process() -> None:
    single = SegMetricAccumulator(num_classes=3)
    for pred, target in _cases():
        single.add(pred, target)
    expected = single.reduce(Dist(env=DistEnv(), device=torch.device("cpu")), {1: "a", 2: "b"})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_reduce_worker, args=(r, port, 2, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        assert results[rank].keys() == expected.keys()
        for key, value in expected.items():
            assert results[rank][key] == pytest.approx(value, abs=1e-9), key
    assert expected["n_cases_with_labels"] == 3



@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 9 subjects, 3 folds: 3 validation cases over 2 ranks (2 + 1: uneven).
    return make_train_dataset(tmp_path_factory.mktemp("ds"), subjects=9, shape=(24, 24, 12))


def test_two_process_gloo_run_logs_one_mlflow_run(tmp_path: Path, dataset: Path) -> None:
    overrides = tiny_train_overrides(tmp_path, dataset, "trainer.max_epochs=2", "trainer.accelerator=cpu",
                                     "tracking.review_cases=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "imaging.train", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("demo_seg")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    assert client.get_model_version_by_alias("demo_seg", "candidate").run_id == run.info.run_id

    # The logged (2-rank, uneven) validation equals one process validating all cases.
    cfg = compose_train(tmp_path, dataset, "trainer.max_epochs=2")
    plan = validate_config(cfg)
    split = split_by_subject(plan.items, 3, 0, 0)
    assert len(split.val) == 3
    net = build_network(plan.network_config)
    net.load_state_dict(load_checkpoint(next(tmp_path.glob("runs/demo_seg/*/checkpoints/last.pt")))["model"])
    d = Dist(env=DistEnv(), device=torch.device("cpu"))
    loader = build_val_loader(split.val, build_inference_transforms(plan.preprocessing, with_label=True),
                              cache="none", cache_dir=None, num_workers=0, rank=0, world_size=1)
    single = validate(model=net, loader=loader, task="segmentation", num_classes=plan.num_classes,
                      names=plan.class_names, d=d, roi_size=plan.preprocessing["roi_size"], progress=False)
    logged = run.data.metrics
    for name in ("liver", "spleen", "kidney"):
        assert logged[f"val_dice_{name}"] == pytest.approx(single[f"dice_{name}"], abs=1e-6)
    assert OmegaConf.select(cfg, "data.cache") == "memory"


def _preempt_worker(rank: int, port: int, root: str, dataset: str, queue: mp.Queue) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    from imaging.launch.preempt import PreemptionFlag
    from imaging.pipelines.train.run import run

    flag = PreemptionFlag()
    if rank == 1:
        flag.set()  # only rank 1 got the signal
    result = run(compose_train(Path(root), Path(dataset), "tracking.register=false", "tracking.review_cases=0"),
                 flag=flag)
    queue.put((rank, result.preempted, result.epochs_done, result.run_id))


def test_preemption_on_one_rank_stops_all_ranks_at_the_same_step(tmp_path: Path, dataset: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_preempt_worker, args=(r, port, str(tmp_path), str(dataset), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: r[1:] for r in (queue.get(timeout=300) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][:2] == results[1][:2] == (True, 0)
    assert results[0][2] == results[1][2] is not None  # rank 1 got the run id from rank 0
    state = load_checkpoint(next(tmp_path.glob("runs/demo_seg/*/checkpoints/last.pt")))["state"]
    assert state["step_in_epoch"] == 1 and state["run_id"] == results[0][2]
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("demo_seg").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
