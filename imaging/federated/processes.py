"""Start and stop Flower's own processes: a SuperLink, SuperNodes, and ``flwr run``.

Used by ``imaging federate`` on one machine (a local federation on 127.0.0.1, each
process real) and by the tests. Across hospitals each site starts its SuperNode
itself (docs/federated.md); the commands here are the same ones, printed in the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from imaging.cpus import usable_cpus

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).with_name("app")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    # Flower's console scripts live beside this interpreter (a venv); fall back to PATH.
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else name


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str, logfile: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {logfile}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; see {logfile}")


def _node_config(path: Path, values: dict[str, str]) -> Path:
    """The SuperNode's ``--node-config`` as a TOML file (JSON string escapes are TOML's basic-string escapes).

    Inline ``key="value"`` pairs are cut by Flower at any quote inside a value: a dataset under a folder
    named ``O'BRIEN`` or ``"THX"`` could not be passed, and the command line logged the path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {json.dumps(str(v))}\n" for k, v in values.items()), encoding="utf-8")
    return path


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per site, as real processes on 127.0.0.1."""

    work_dir: Path
    port: int = 0
    superlink: subprocess.Popen[bytes] | None = None
    supernodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Extra environment of the coordinator's processes only (SuperLink, ServerApp, flwr run).
    coordinator_env: dict[str, str] = field(default_factory=dict)
    # CPU threads of each site's training (OMP_NUM_THREADS of its SuperNode and worker): the
    # sites of a local federation share this machine's cores; 0 = cores / sites.
    threads_per_site: int = 0

    @property
    def flwr_home(self) -> Path:
        return self.work_dir / "flwr"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.flwr_home)
        # The SuperLink and SuperNodes start flower-superexec / flwr-serverapp / flwr-clientapp
        # by name: this interpreter's scripts must come first on PATH (a venv not activated).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start_superlink(self, timeout_s: float = 60.0) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
            "insecure = true\n")
        logfile = self.work_dir / "superlink.log"
        # --insecure: loopback only. Across hospitals use TLS (docs/federated.md).
        cmd = [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.work_dir / "superlink.db"), "--disable-runtime-dependency-installation"]
        log.info("$ %s", " ".join(cmd))
        self.superlink = subprocess.Popen(cmd, stdout=logfile.open("ab"), stderr=subprocess.STDOUT,
                                          env={**self.env(), **self.coordinator_env}, start_new_session=True)
        _wait_port(self.port, self.superlink, timeout_s, "flower-superlink", logfile)

    def start_supernodes(self, sites: dict[str, tuple[Path, Path]], timeout_s: float = 90.0) -> None:
        """Start one SuperNode per site ``name -> (dataset_dir, work_dir)``, all at once."""
        if not self.threads_per_site:
            # Three sites' torch thread pools on two cores spin against each other: a round
            # took twice as long as with one thread each.
            self.threads_per_site = max(1, usable_cpus() // max(len(sites), 1))
        waits = [self._spawn_supernode(site, dataset, work) for site, (dataset, work) in sites.items()]
        for port, proc, what, logfile in waits:
            _wait_port(port, proc, timeout_s, what, logfile)

    def start_supernode(self, site: str, dataset_dir: Path, work_dir: Path, timeout_s: float = 90.0) -> None:
        port, proc, what, logfile = self._spawn_supernode(site, dataset_dir, work_dir)
        _wait_port(port, proc, timeout_s, what, logfile)

    def _spawn_supernode(self, site: str, dataset_dir: Path,
                         work_dir: Path) -> tuple[int, subprocess.Popen[bytes], str, Path]:
        port = free_port()
        logfile = self.work_dir / f"supernode-{site}.log"
        cmd = [_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
               "--host", "127.0.0.1", "--port", str(port),
               "--node-config", str(_node_config(work_dir / "node-config.toml", {
                   "site": site, "dataset-dir": str(dataset_dir), "work-dir": str(work_dir)}))]
        log.info("$ %s", " ".join(cmd))
        env = self.env()
        if self.threads_per_site and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads_per_site)
        proc = subprocess.Popen(cmd, stdout=logfile.open("ab"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.supernodes[site] = proc
        return port, proc, f"flower-supernode ({site})", logfile

    def run(self, config_path: Path, timeout_s: float) -> int:
        """``flwr run`` the FAB with ``config=<config_path>``; wait for the run to end.

        Returns:
            the exit code of ``flwr run --stream`` (the run's logs are in ``flwr-run.log``).
        """
        logfile = self.work_dir / "flwr-run.log"
        cmd = [_bin("flwr"), "run", str(APP_DIR), "local", "--stream",
               "--run-config", f"config={json.dumps(str(config_path))}"]
        log.info("$ %s", " ".join(cmd))
        start = logfile.stat().st_size if logfile.is_file() else 0
        with logfile.open("ab") as out:
            try:
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                      env={**self.env(), **self.coordinator_env},
                                      timeout=timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                return 124
        if code != 0:
            return code
        # `flwr run --stream` exits 0 when the ServerApp raised (flwr 1.42): ask the SuperLink
        # how the run ended.
        with logfile.open("rb") as fh:
            fh.seek(start)
            found = re.search(rb"Successfully started run (\d+)", fh.read())
        if found is None:
            log.error("flwr run started no run; see %s", logfile)
            return 1
        status = self.run_status(int(found.group(1)))
        if status != "finished:completed":
            log.error("Flower run %s ended %s; see %s", found.group(1), status, logfile)
            return 1
        return 0

    def run_status(self, run_id: int, timeout_s: float = 30.0) -> str:
        """The SuperLink's status of ``run_id`` (``finished:completed``, ``finished:failed`` ...)."""
        deadline = time.monotonic() + timeout_s
        status = "unknown"
        while time.monotonic() < deadline:
            proc = subprocess.run([_bin("flwr"), "ls", "local", "--run-id", str(run_id), "--format", "json"],
                                  capture_output=True, text=True, env=self.env(), timeout=60, check=False)
            try:
                runs = json.loads(proc.stdout).get("runs") or []
                status = str(runs[0]["status"]) if runs else "unknown"
            except (ValueError, KeyError, IndexError):
                status = f"unknown ({(proc.stdout or proc.stderr).strip()[-200:]})"
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        return status

    def kill_site(self, site: str) -> None:
        """SIGKILL a site's SuperNode and its ClientApp processes (a hospital going away)."""
        proc = self.supernodes.pop(site)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def run_sites(self, sites: dict[str, tuple[Path, Path]], config_path: Path, timeout_s: float) -> int:
        """Start the SuperLink and one SuperNode per site ``name -> (dataset_dir, work_dir)``, ``flwr run``
        the FAB with ``config_path``, and stop every process whatever happened; the run's exit code."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_superlink()
            self.start_supernodes(sites)
            return self.run(config_path, timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        procs = [*self.supernodes.values(), *([self.superlink] if self.superlink else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.supernodes.clear()
        self.superlink = None
