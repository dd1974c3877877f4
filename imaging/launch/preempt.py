"""Preemption and time-limit signals: ask the loop to stop at a safe point.

Slurm sends ``--signal=B:USR1@LEAD`` seconds before the time limit, and SIGTERM
on preemption. A handler only sets a flag; the training loop polls
:meth:`PreemptionFlag.requested` after each step/epoch, writes a checkpoint and
returns, and the batch script requeues the job (see ``imaging/launch/templates/train.sbatch.j2``).
Doing real work inside a signal handler would race with the loop.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Exit code of a process that stopped for a signal after writing its checkpoint:
# the sbatch script sees it and requeues the job (bounded by launcher.max_requeues).
EXIT_PREEMPTED = 3
# Set by imaging/launch/templates/train.sbatch.j2: rank 0 creates this file once every rank has checkpointed and
# stopped. With `srun --kill-on-bad-exit=1` the first rank to exit 3 makes Slurm kill the others,
# and srun then reports 143, not 3; the batch script reads the marker instead.
MARKER_ENV = "IMAGING_PREEMPT_MARKER"


def mark_preempted(is_main: bool, environ: dict[str, str] | None = None) -> None:
    """Rank 0: leave ``$IMAGING_PREEMPT_MARKER`` (if set) saying "stopped cleanly after a checkpoint".

    Call it before the last barrier, so that no rank exits before the marker exists.
    """
    import os
    from pathlib import Path

    path = (os.environ if environ is None else environ).get(MARKER_ENV)
    if is_main and path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(f"{EXIT_PREEMPTED}\n")


class PreemptionFlag:
    """A thread-safe flag set by SIGUSR1/SIGTERM (or by hand in tests)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self, signals: tuple[int, ...] = DEFAULT_SIGNALS) -> PreemptionFlag:
        """Install handlers (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._event.set()
        log.warning("received %s: will checkpoint and stop at the next safe point", signal.Signals(signum).name)

    def set(self, signum: int = signal.SIGUSR1) -> None:
        self._handle(signum, None)

    @property
    def requested(self) -> bool:
        return self._event.is_set()
