"""Checks ``imaging submit`` runs before ``sbatch``, so a bad config fails now, not after the queue.

Each job kind is checked with what the job itself checks first (``train``:
:func:`imaging.plan.train.validate_config`: dataset, labels, network and its
arguments, trainer values; ``ingest``/``infer``: input and output folders, the
de-identification secret), plus the launcher's secrets. Paths that an earlier
job of a ``--dependency`` chain creates (``produced``) are not required to exist yet.

Secrets never go into a script (it sits on shared storage, often world-readable):
``launcher.secret_files.NAME=PATH`` names a file of mode 0600 the job reads at run
time, and a variable exported before ``imaging submit`` reaches the job through
sbatch's default ``--export=ALL``. A ``launcher.env`` key that looks like a secret is refused.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imaging.errors import UsageError, require_dir, require_input, require_writable_dir

_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY)", re.I)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_secrets(launcher: Mapping[str, Any]) -> None:
    """``launcher.env`` holds no secret; every ``launcher.secret_files`` entry is a 0600 file.

    Raises
    ------
    UsageError
        Names the key: a secret-looking ``launcher.env.NAME``, a bad variable name, a
        missing secret file, or one that group or others can read.
    """
    for name in dict(launcher.get("env") or {}):
        if _SECRET_NAME.search(str(name)):
            raise UsageError(f"launcher.env.{name}: looks like a secret and would be written into the job script; "
                             f"put it in a file (chmod 600) and use launcher.secret_files.{name}=PATH, or export "
                             f"{name} before `imaging submit` (sbatch passes the environment on)")
    for name, path in dict(launcher.get("secret_files") or {}).items():
        key = f"launcher.secret_files.{name}"
        if not _ENV_NAME.match(str(name)):
            raise UsageError(f"{key}: not a valid environment variable name")
        file = Path(str(path)).expanduser()
        if not file.is_file():
            raise UsageError(f"{key}='{path}': no such file")
        mode = stat.S_IMODE(file.stat().st_mode)
        if mode & 0o077:
            raise UsageError(f"{key}='{path}': mode {mode:04o} lets others read it; run `chmod 600 {path}`")


def check_job(kind: str, cfg: DictConfig, produced: Collection[str] = ()) -> None:
    """What the job would refuse at start, checked here (see the module docstring).

    Parameters
    ----------
    kind: ``train`` | ``infer`` | ``ingest``.
    cfg: the job's composed config (as :func:`imaging.launch.submit.compose` returns it).
    produced: config keys whose paths an earlier job of the chain writes.

    Raises
    ------
    UsageError
        Names the key and value (``ConfigError`` for training is one).
    """
    if kind == "train":
        from imaging.plan.train import ConfigError, validate_config

        try:
            validate_config(cfg)
        except ConfigError as exc:
            # The dataset an ingest job of the chain will write: nothing to check yet.
            if not (exc.key.startswith("data.dataset_dir") and "data.dataset_dir" in produced):
                raise
    elif kind == "ingest":
        require_dir("input_dir", cfg.input_dir)
        require_writable_dir("output_dir", cfg.output_dir)
        from imaging.keys import Pseudonymizer

        Pseudonymizer.from_config(cfg.secret_file, bool(cfg.demo_key))  # SecretError is a UsageError
    elif kind == "infer":
        if "input" not in produced and not str(cfg.input).startswith(("http://", "https://")):
            require_input("input", cfg.input)
        require_writable_dir("output_dir", cfg.output_dir)
        uri = str(cfg.get("model_uri") or "")
        if uri in ("", "???"):
            raise UsageError("model is required (model=models:/NAME@ALIAS)")
        if uri.startswith("models:/"):
            from imaging.tracking.registry import parse_model_uri

            try:
                parse_model_uri(uri)
            except ValueError as exc:
                raise UsageError(f"model='{uri}': {exc}") from None
