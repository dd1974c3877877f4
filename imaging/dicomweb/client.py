"""A DICOMweb connection: ``dicomweb-client`` with our authentication and our error messages.

Credentials never come from the command line (it ends up in shell history, ``ps``,
Slurm's job records and Hydra's saved overrides): the config names a *file* or an
*environment variable* that holds them, and they are attached to the HTTP session
as a ``requests`` auth object, which neither requests nor dicomweb-client logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient

from imaging.errors import UsageError

log = logging.getLogger(__name__)

AUTH_KINDS = ("none", "basic", "bearer")
DEFAULT_TIMEOUT_S = 60.0


class DicomwebError(Exception):
    """A DICOMweb request failed; the message says what, where (study key) and why, never a credential."""


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` (requests has basic auth built in, not bearer)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never show the token
        return "_Bearer(***)"


def _secret(cfg: Mapping[str, Any], what: str) -> str:
    """Read ``<what>_file`` (a path) or ``<what>_env`` (a variable name) from the auth config.

    Raises:
        UsageError: neither is set, the file is missing/empty or the variable unset (names the key, not the value).
    """
    file_key, env_key = f"{what}_file", f"{what}_env"
    if cfg.get(file_key):
        path = Path(str(cfg[file_key])).expanduser()
        if not path.is_file():
            raise UsageError(f"auth.{file_key}='{path}': no such file")
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise UsageError(f"auth.{file_key}='{path}': the file is empty")
        return value
    if cfg.get(env_key):
        value = os.environ.get(str(cfg[env_key]), "").strip()
        if not value:
            raise UsageError(f"auth.{env_key}: the environment variable {cfg[env_key]} is not set")
        return value
    raise UsageError(f"auth.kind needs auth.{file_key}=PATH or auth.{env_key}=VARIABLE (never the value itself)")


@dataclass(frozen=True)
class DicomwebSettings:
    """Where the server is and how to log in (``conf/pull.yaml``'s ``url``, ``auth``, ``timeout_s``)."""

    url: str
    auth: Mapping[str, Any] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def session(self) -> requests.Session:
        """A requests session carrying the configured credentials.

        Raises:
            UsageError: unknown ``auth.kind``, or its secret cannot be read.
        """
        cfg = dict(self.auth or {})
        kind = str(cfg.get("kind") or "none")
        session = requests.Session()
        if kind == "basic":
            user = str(cfg.get("username") or "")
            if not user:
                raise UsageError("auth.kind=basic needs auth.username")
            session.auth = requests.auth.HTTPBasicAuth(user, _secret(cfg, "password"))
        elif kind == "bearer":
            session.auth = _Bearer(_secret(cfg, "token"))
        elif kind != "none":
            raise UsageError(f"auth.kind='{kind}' is not one of {AUTH_KINDS}")
        return session

    def client(self) -> DICOMwebClient:
        """A ``DICOMwebClient`` on ``url`` (no retries on 4xx; 503/504/429 are retried by the library)."""
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"url='{self.url}': a DICOMweb URL starts with http:// or https://")
        client = DICOMwebClient(self.url.rstrip("/"), session=self.session(), timeout=self.timeout_s)
        client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=200)
        return client


def explain(exc: BaseException, what: str) -> str:
    """One line for a failed request: ``what`` (e.g. ``study 1a2b...: retrieve``) and why.

    The URL is left out: it holds the study UID, which dataset-side reports must not.
    """
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        why = {401: "unauthorized (401): check auth.kind and its credentials",
               403: "forbidden (403): the credentials lack the right",
               404: "not found on the server (404): deleted or moved since the query"}.get(code, f"HTTP {code}")
        return f"{what}: {why}"
    if isinstance(exc, requests.ConnectionError):
        return f"{what}: server unreachable ({type(exc).__name__})"
    if isinstance(exc, requests.Timeout):
        return f"{what}: timed out"
    return f"{what}: {type(exc).__name__}: {exc}"


def check_reachable(client: DICOMwebClient, url: str) -> None:
    """Fail fast, before any work, when the server cannot be reached or refuses the credentials.

    Raises:
        DicomwebError: unreachable, 401/403, or not a DICOMweb server.
    """
    try:
        client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
    except (requests.RequestException, ValueError) as exc:
        raise DicomwebError(explain(exc, f"DICOMweb server {url}")) from None
