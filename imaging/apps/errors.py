"""Exception -> (exit code, one line): the error contract of :mod:`imaging.cli`.

Hydra, OmegaConf and MLflow each report a bad value in a paragraph with a stack-trace
hint; a user needs the key, the value and the valid choices on one line.
"""

from __future__ import annotations

import re

from imaging.errors import EXIT_INTERNAL, EXIT_USAGE, UsageError, closest

_MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^']+)'")


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that reached the CLI."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    for handler in (_hydra, _omegaconf, _mlflow):
        found = handler(exc)
        if found is not None:
            return EXIT_USAGE, found
    first = (str(exc).strip().splitlines() or [""])[0]
    return EXIT_INTERNAL, (f"internal error: {type(exc).__name__}: {first} "
                           "(rerun with --debug for the traceback)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def _hydra(exc: BaseException) -> str | None:
    try:
        from hydra.errors import (
            ConfigCompositionException,
            HydraException,
            MissingConfigException,
            OverrideParseException,
        )
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        m = _MISSING_OPTION.search(text)
        options = list(exc.options or []) or _listed_options(text)
        if m:
            group, option = m.groups()
            hint = closest(option, options) if options else None
            return f"{group}={option}: no such option" + (f" ({hint})" if hint else "")
        return _first_line(exc)
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        line = _first_line(exc)
        m = re.match(r"Could not override '([^']+)'", line)
        if m and cause is not None and "not in struct" in str(cause):
            key = m.group(1)
            return f"{key}: no such config key (to add a new key use +{key}=VALUE)"
        if cause is not None:
            return f"{line.rstrip('.')}: {_first_line(cause)}"
        return line
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override '{exc.override}' (key=value; quote values with "
                "spaces or special characters)")
    if isinstance(exc, HydraException):
        return _first_line(exc)
    return None


def _listed_options(text: str) -> list[str]:
    """Hydra lists a group's options as tab-indented lines after 'Available options in'."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Available options in"):
            return [ln.strip() for ln in lines[i + 1:] if ln.startswith("\t")]
    return []


def _omegaconf(exc: BaseException) -> str | None:
    try:
        from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or _first_line(exc).rsplit(":", 1)[-1].strip()
        return f"{key} is required ({key}=...)"
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        msg = _first_line(exc)
        return f"{key}: {msg}" if key else msg
    return None


def _mlflow(exc: BaseException) -> str | None:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MlflowException) and exc.error_code in (
        "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND",
    ):
        return _first_line(exc) + " (`imaging where` shows the store; `imaging model list` its models)"
    return None
