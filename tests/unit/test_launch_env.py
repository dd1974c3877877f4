"""Rank/world/rendezvous from torchrun and Slurm environments; host lists; ports."""

from __future__ import annotations

import pytest

from imaging.jobenv import (
    DEFAULT_PORT,
    dist_env,
    first_host,
    in_srun_step,
    parse_hostlist,
    port_from_job_id,
)


@pytest.mark.parametrize(("nodelist", "hosts"), [
    ("vm", ["vm"]),
    ("node1,node2", ["node1", "node2"]),
    ("gpu[012-014,020],login1", ["gpu012", "gpu013", "gpu014", "gpu020", "login1"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("gpu[008-010]", ["gpu008", "gpu009", "gpu010"]),
    ("rack[1-2]-n[08-09]-ib", ["rack1-n08-ib", "rack1-n09-ib", "rack2-n08-ib", "rack2-n09-ib"]),
    ("alvis3-[01-02],alvis4-05", ["alvis3-01", "alvis3-02", "alvis4-05"]),
])
def test_parse_hostlist_forms(nodelist: str, hosts: list[str]) -> None:
    assert parse_hostlist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-2", "gpu[a-b]", "gpu]1["])
def test_parse_hostlist_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        parse_hostlist(bad)


def test_first_host_matches_parser() -> None:
    assert first_host("gpu[012-015,020],login1") == "gpu012"
    assert first_host("rack[3-4]-n[1-2]") == "rack3-n1"


def test_port_from_job_id_is_stable_and_in_range() -> None:
    assert port_from_job_id(123456) == port_from_job_id("123456")
    assert port_from_job_id(1) != port_from_job_id(2)
    ports = {port_from_job_id(j) for j in range(0, 200_000, 7)}
    assert min(ports) >= 15000 and max(ports) < 35000


def _slurm_step(procid: int, localid: int, ntasks: int, **extra: str) -> dict[str, str]:
    env = {"SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), "SLURM_NTASKS": str(ntasks),
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    env.update(extra)
    return env


def test_slurm_srun_step() -> None:
    d = dist_env(_slurm_step(5, 1, 8))
    assert (d.rank, d.local_rank, d.world_size, d.source) == (5, 1, 8, "slurm")
    assert d.master_addr == "gpu07"
    assert d.master_port == port_from_job_id(4242)
    assert d.is_distributed and not d.is_main


def test_slurm_batch_shell_is_one_process() -> None:
    # The batch script sees SLURM_PROCID=0 and the job's SLURM_NTASKS but is not an srun task.
    env = _slurm_step(0, 0, 8)
    del env["SLURM_STEP_ID"], env["SLURM_STEP_NUM_TASKS"]
    assert not in_srun_step(env)
    assert dist_env(env).world_size == 1 and dist_env(env).source == "single"


def test_slurm_srun_single_task_inside_big_job() -> None:
    env = _slurm_step(0, 0, 8, SLURM_STEP_NUM_TASKS="1")
    assert dist_env(env).world_size == 1


def test_slurm_exported_master_wins() -> None:
    # The sbatch script exports MASTER_ADDR/PORT once for every task.
    env = _slurm_step(1, 1, 2, MASTER_ADDR="10.0.0.7", MASTER_PORT="23456")
    d = dist_env(env)
    assert (d.master_addr, d.master_port) == ("10.0.0.7", 23456)


def test_torchrun_wins_over_slurm() -> None:
    env = _slurm_step(3, 3, 4)
    env.update({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    d = dist_env(env)
    assert (d.rank, d.local_rank, d.world_size, d.master_addr, d.master_port, d.source) == \
        (1, 1, 2, "h", 1234, "torchrun")


def test_nothing_is_single() -> None:
    d = dist_env({})
    assert (d.rank, d.world_size, d.master_port, d.source) == (0, 1, DEFAULT_PORT, "single")
    assert d.is_main and not d.is_distributed
