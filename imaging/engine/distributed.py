"""torch.distributed set-up and the few collectives the loop needs.

Rank and world size come from :func:`imaging.jobenv.dist_env` (torchrun or
Slurm ``srun``); gloo on CPU, nccl on GPU. A single process never initialises a
process group, and every helper here degrades to the identity in that case.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imaging.jobenv import DistEnv, dist_env

log = logging.getLogger(__name__)


@dataclass
class Dist:
    env: DistEnv
    device: torch.device
    backend: str | None = None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


def setup(accelerator: str = "auto", timeout_s: int = 1800) -> Dist:
    """Initialise the process group when launched with world size > 1.

    Args:
        accelerator: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (alias ``gpu``).
        timeout_s: collective timeout (a dead peer surfaces as an error, not a hang forever).

    Raises:
        RuntimeError: ``accelerator=cuda`` without a GPU.
    """
    env = dist_env()
    use_cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.accelerator={accelerator} but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(env.local_rank % max(1, torch.cuda.device_count()))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    backend = None
    if env.is_distributed and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined the %s process group", env.rank, env.world_size, backend)
    elif dist.is_initialized():
        backend = dist.get_backend()
    return Dist(env=env, device=device, backend=backend)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place on a copy; returns it)."""
    out = tensor.detach().clone().to(d.device)
    if d.active:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, d: Dist) -> bool:
    """True when ``flag`` is true on any rank: every rank gets the same answer,
    so all of them stop (preemption) at the same step."""
    if not d.active:
        return flag
    t = torch.tensor([1 if flag else 0], device=d.device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object, d: Dist) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not d.active:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def sync_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the *start* of each forward, so after the last
    training step every rank holds its own statistics; validating with them
    would score a model that is not the one rank 0 checkpoints.
    """
    if not d.active:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)
