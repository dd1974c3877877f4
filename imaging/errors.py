"""One error contract for every command (see README "Exit codes").

Library code raises; only :mod:`imaging.cli` turns an exception into an exit code
and one line on stderr. :class:`UsageError` (and the errors that subclass it:
:class:`~imaging.keys.SecretError`, the training :class:`ConfigError`, the deid
:class:`DeidConfigError`) mean "bad invocation or config, nothing was done": exit 2.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1  # done, but some inputs failed: listed in the catalog/report
EXIT_USAGE = 2          # bad invocation or config; nothing was done
EXIT_PREEMPTED = 3      # stopped for a signal after checkpointing; the Slurm script requeues
EXIT_INTERNAL = 4       # an unexpected error (a bug): rerun with --debug for the traceback


class UsageError(ValueError):
    """A bad command-line value or config key: the message names it (exit 2).

    Args:
        message: one line, starting with the key or path (``input_dir='/x': not a folder``).
        hint: the closest valid choice(s), appended as ``(did you mean ...?)``.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message if not hint else f"{message} ({hint})")


def closest(value: str, choices: Iterable[str], n: int = 3) -> str | None:
    """``did you mean 'a'?`` for the nearest of ``choices``, or ``choices: a, b`` when none is near."""
    options = sorted(set(choices))
    if not options:
        return None
    near = difflib.get_close_matches(value, options, n=n, cutoff=0.6)
    if near:
        return "did you mean " + " or ".join(f"'{c}'" for c in near) + "?"
    return "choices: " + ", ".join(options)


def require_dir(key: str, value: str | os.PathLike[str] | None) -> Path:
    """An existing folder, else :class:`UsageError` naming ``key`` and the value.

    Raises:
        UsageError: unset, missing, or a file where a folder is expected.
    """
    if value in (None, "", "???"):
        raise UsageError(f"{key} is required ({key}=PATH)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise UsageError(f"{key}='{value}': no such folder")
    if not path.is_dir():
        raise UsageError(f"{key}='{value}': is a file, expected a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{key}='{value}': folder is not readable")
    return path


def require_input(key: str, value: str | os.PathLike[str] | None) -> Path:
    """An existing file or folder (e.g. a dataset folder or its catalog.csv)."""
    if value in (None, "", "???"):
        raise UsageError(f"{key} is required ({key}=PATH)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise UsageError(f"{key}='{value}': no such file or folder")
    return path


def require_writable_dir(key: str, value: str | os.PathLike[str] | None) -> Path:
    """A folder we can create files in (it may not exist yet; its nearest parent must).

    Writability is tried, not inferred from mode bits: root passes ``os.access`` on a
    read-only mount or inside ``/proc``, and then fails half-way through the job.

    Raises:
        UsageError: unset, a file, or no file can be created there.
    """
    if value in (None, "", "???"):
        raise UsageError(f"{key} is required ({key}=PATH)")
    path = Path(str(value)).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{key}='{value}': is a file, expected a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{key}='{value}': '{probe}' is a file, so the folder cannot be created")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"{key}='{value}': cannot write in '{probe}' ({exc.strerror})") from None
    return path
