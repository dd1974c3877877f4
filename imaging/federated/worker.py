"""A site's warm worker: the process that keeps torch, MONAI and the site's loaders
between Flower messages.

Flower's SuperNode starts a fresh ClientApp process for every message (``flwr-clientapp``,
process isolation; there is no long-lived mode in flwr 1.42). Importing torch and MONAI
in it takes 5-12 s on a small machine, more than a round's training on the demo, and the
site's volumes would be read again every message. So the ClientApp is a thin shim: it
hands each message to this worker over a local socket and returns its answer. Written by
hand because Flower has no such cache and the rest (multiprocessing.connection) is the
standard library.

- One worker per site work folder, started by the first message (``ensure_worker``); its
  socket is an abstract Unix socket named from the work folder (no file to clean up, no
  path-length limit), and every connection authenticates with a random key kept in the
  work folder (mode 0600).
- It exits when the SuperNode that started it is gone or after ``idle_s`` without a
  message. A message to a dead worker starts a new one.
- Nothing leaves the site: the worker runs on the site's machine, as the site's user, on
  the site's data, exactly as the in-process ClientApp did.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KEY_FILE = "worker.key"
LOG_FILE = "worker.log"
IDLE_S = 1800.0
START_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
    """The worker could not be reached, or the operation raised in it: ``Type: message``
    (the traceback stays in the site's ``worker.log``)."""


def address(work_dir: Path) -> str:
    """The worker's abstract Unix socket for this site work folder (Linux)."""
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:24]
    return f"\0imaging-site-worker-{digest}"


def _key(work_dir: Path, create: bool) -> bytes | None:
    path = work_dir / KEY_FILE
    if not path.is_file():
        if not create:
            return None
        work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def _connect(work_dir: Path) -> Connection | None:
    key = _key(work_dir, create=False)
    if key is None:
        return None
    try:
        return Client(address(work_dir), family="AF_UNIX", authkey=key)
    except (OSError, EOFError, AuthenticationError):  # nobody listening, or a worker of another key
        return None


def ensure_worker(work_dir: Path, supernode_pid: int, timeout_s: float = START_TIMEOUT_S,
                  idle_s: float = IDLE_S) -> Connection:
    """A connection to the site's worker, starting one if none answers.

    Raises:
        WorkerError: the worker exited or did not answer within ``timeout_s`` (its log
            tail is in the message).
    """
    conn = _connect(work_dir)
    if conn is not None:
        return conn
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "worker.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two messages never start two workers
        conn = _connect(work_dir)
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            (work_dir / KEY_FILE).unlink()  # a fresh key: a stale worker can no longer be reached
        _key(work_dir, create=True)
        logfile = work_dir / LOG_FILE
        with open(logfile, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "imaging.federated.worker", "--work-dir", str(work_dir),
                                     "--supernode-pid", str(supernode_pid), "--idle-s", str(idle_s)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            conn = _connect(work_dir)
            if conn is not None:
                return conn
            if proc.poll() is not None:
                raise WorkerError(f"the site worker exited with code {proc.returncode}: "
                                  f"{_tail(logfile)}")
            time.sleep(0.1)
        proc.kill()
        raise WorkerError(f"the site worker did not answer within {timeout_s:.0f} s: {_tail(logfile)}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def call(work_dir: Path, supernode_pid: int, op: str, payload: dict[str, Any], idle_s: float = IDLE_S) -> Any:
    """Run ``op`` (query, train, evaluate) in the site's worker; its result.

    Raises:
        WorkerError: the operation raised in the worker, or the worker died during it.
    """
    conn = ensure_worker(work_dir, supernode_pid, idle_s=idle_s)
    try:
        conn.send((op, payload))
        status, result = conn.recv()
    except (EOFError, OSError) as exc:
        raise WorkerError(f"the site worker died during '{op}': {_tail(work_dir / LOG_FILE)}") from exc
    finally:
        conn.close()
    if status != "ok":
        raise WorkerError(str(result))
    return result


# --- the worker process -------------------------------------------------------------------------


class _Handler:
    """The site's state between messages: one :class:`~imaging.federated.site.Site` per
    (recipe, settings), built on first use (the in-process ClientApp's cache, kept warm)."""

    def __init__(self) -> None:
        self.sites: dict[str, Any] = {}

    def site(self, recipe: str, node_config: dict[str, Any]) -> Any:
        from imaging.federated.site import Site, SiteSettings, site_config

        settings = SiteSettings.from_node_config(node_config)
        # A re-ingested dataset (new catalog) is a new Site: the loaded volumes are not reused.
        try:
            stamp = (settings.dataset_dir / "catalog.csv").stat()
            version = f"{stamp.st_mtime_ns}:{stamp.st_size}"
        except OSError:
            version = "no catalog"
        key = hashlib.sha256(f"{recipe}\n{settings}\n{version}".encode()).hexdigest()
        if key not in self.sites:
            self.sites.clear()
            self.sites[key] = Site(site_config(recipe, settings), settings)
        return self.sites[key]

    def __call__(self, op: str, p: dict[str, Any]) -> Any:
        if op == "ping":
            return os.getpid()
        if op == "evaluate_model":  # cross-site evaluation of a registered model (issue 31)
            from imaging.federated.evaluation import evaluate_at_site

            return evaluate_at_site(p)
        if op not in ("query", "evaluate", "train"):
            raise ValueError(f"unknown operation '{op}'")
        from imaging.federated.site import plan_summary

        site = self.site(p["recipe"], p["node_config"])
        if op == "query":
            return {"site": site.settings.name, **plan_summary(site.plan)}
        if op == "evaluate":
            return site.evaluate(to_torch(p["state"]))
        state = to_torch(p["state"])
        evaluation = site.evaluate(state) if p.get("evaluate_first") else None
        new_state, metrics = site.train(state, epochs=p["epochs"], lr=p["lr"], proximal_mu=p["proximal_mu"],
                                        server_round=int(p.get("server_round", 1)),
                                        total_epochs=p.get("total_epochs"),
                                        keep_optimizer=bool(p.get("keep_optimizer", False)))
        return {"state": {k: v.numpy() for k, v in new_state.items()}, "metrics": metrics,
                "evaluate": evaluation}


_IN_PROCESS = _Handler()


def in_process(op: str, payload: dict[str, Any]) -> Any:
    """Run ``op`` in this process (``worker="false"``, or no work folder configured)."""
    return _IN_PROCESS(op, payload)


def to_torch(state: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


def _watch(supernode_pid: int, last: list[float], idle_s: float) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(supernode_pid, 0)
        except ProcessLookupError:
            log.info("the SuperNode (pid %d) is gone: exiting", supernode_pid)
            os._exit(0)
        except PermissionError:
            pass  # alive, another user's process
        if time.monotonic() - last[0] > idle_s:
            log.info("idle for %.0f s: exiting", idle_s)
            os._exit(0)


def serve(work_dir: Path, supernode_pid: int, idle_s: float = IDLE_S) -> None:
    """Answer messages until the SuperNode is gone or ``idle_s`` pass without one."""
    key = _key(work_dir, create=False)
    if key is None:
        raise SystemExit(f"no {work_dir / KEY_FILE}: the worker is started by the ClientApp")
    handler = _Handler()
    last = [time.monotonic()]
    threading.Thread(target=_watch, args=(supernode_pid, last, idle_s), daemon=True).start()
    with Listener(address(work_dir), family="AF_UNIX", authkey=key) as listener:
        log.info("site worker listening (pid %d, SuperNode pid %d)", os.getpid(), supernode_pid)
        while True:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a client with a wrong key, or one that hung up
                continue
            with conn:
                try:
                    op, payload = conn.recv()
                except (EOFError, OSError):
                    continue
                last[0] = time.monotonic()
                t0 = time.perf_counter()
                try:
                    reply: tuple[str, Any] = ("ok", handler(op, payload))
                except Exception as exc:  # noqa: BLE001 - the ClientApp turns it into Flower's error reply
                    log.error("%s failed:\n%s", op, traceback.format_exc())  # the site's own log
                    reply = ("error", f"{type(exc).__name__}: {exc}")
                log.info("%s: %s in %.2f s", op, reply[0], time.perf_counter() - t0)
                last[0] = time.monotonic()
                with contextlib.suppress(OSError):
                    conn.send(reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A federated site's warm worker (started by the ClientApp).")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--supernode-pid", type=int, required=True)
    parser.add_argument("--idle-s", type=float, default=IDLE_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.work_dir, args.supernode_pid, args.idle_s)


if __name__ == "__main__":
    main()
