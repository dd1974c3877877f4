"""The site's warm worker: one process kept between Flower messages, reached only with
the site's key, gone when its SuperNode is gone. Real processes, no Flower needed."""

from __future__ import annotations

import os
import subprocess
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from imaging.federated.worker import KEY_FILE, WorkerError, address, call


def _alive(pid: int) -> bool:
    # Started from this process (the ClientApp's place), the worker is our child here: once it
    # exits it is a zombie until reaped, which counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_one_worker_serves_every_message_and_exits_with_its_supernode(tmp_path: Path) -> None:
    supernode = subprocess.Popen(["sleep", "120"])
    try:
        pid = call(tmp_path, supernode.pid, "ping", {})
        assert pid != os.getpid() and call(tmp_path, supernode.pid, "ping", {}) == pid, "the same warm process"
        assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"
        with pytest.raises(WorkerError, match="unknown operation 'nope'"):
            call(tmp_path, supernode.pid, "nope", {})
        assert call(tmp_path, supernode.pid, "ping", {}) == pid, "an error does not end the worker"
        with pytest.raises(AuthenticationError):  # anyone else on the machine: no key, no answer
            Client(address(tmp_path), family="AF_UNIX", authkey=b"not the site's key")
    finally:
        supernode.kill()
        supernode.wait()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the worker outlived its SuperNode"


def test_a_site_without_data_is_a_config_error_from_the_worker(tmp_path: Path) -> None:
    supernode = subprocess.Popen(["sleep", "120"])
    try:
        with pytest.raises(WorkerError, match="ConfigError.*dataset-dir"):
            call(tmp_path / "work", supernode.pid, "query",
                 {"recipe": "{}", "node_config": {"site": "A", "dataset-dir": str(tmp_path / "missing"),
                                                  "work-dir": str(tmp_path / "work")}})
    finally:
        supernode.kill()
        supernode.wait()


def test_an_idle_worker_exits_and_the_next_message_starts_another(tmp_path: Path) -> None:
    supernode = subprocess.Popen(["sleep", "120"])
    try:
        first = call(tmp_path, supernode.pid, "ping", {}, idle_s=1.0)
        deadline = time.monotonic() + 15
        while _alive(first) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(first), "an idle worker must let go of its memory"
        second = call(tmp_path, supernode.pid, "ping", {}, idle_s=1.0)
        assert second != first
    finally:
        supernode.kill()
        supernode.wait()
