"""Typed settings of the ``dicomweb`` group (``imaging pull``, ``imaging infer input=URL``) and of
``imaging pull``'s own keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from imaging.settings.check import setting
from imaging.settings.inference import QuerySettings


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


@dataclass
class AuthSettings:
    """``dicomweb.auth``: credentials from a file or a variable, never on the command line."""

    kind: str = setting("none", choices=("none", "basic", "bearer"))
    username: str | None = setting(None)
    password_file: str | None = setting(None)
    password_env: str | None = setting(None)
    token_file: str | None = setting(None)
    token_env: str | None = setting(None)


@dataclass
class DicomwebSettings:
    """``dicomweb.*``: connection to a DICOMweb archive."""

    auth: AuthSettings = field(default_factory=AuthSettings)
    timeout_s: float = setting(60, gt=0.0)
    workers: int = setting(4, min=1)


@dataclass
class PullCommand:
    """The top-level keys of ``imaging pull`` (``output_dir``: checked by the app as a path)."""

    url: str = setting("", choices=(), pattern=_is_url, expect="is not an http(s):// URL (the DICOMweb root)")
    output_dir: str = setting("")
    study: list[str] | str = setting(None)
    query: QuerySettings = field(default_factory=QuerySettings)
    progress: bool = setting(True)
    secret_file: str | None = setting(None)
    demo_key: bool = setting(False)
