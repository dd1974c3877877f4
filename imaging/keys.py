"""Keyed pseudonyms: HMAC-SHA256 of original identifiers under a project secret.

The same secret gives the same pseudonyms across exports (re-ingest is
idempotent, a patient seen twice keeps one subject key); without the secret a
pseudonym cannot be reversed or recomputed from a guessed identifier. This is
the one place keys are derived: ingest (catalog keys, file names), deid (IDs,
UIDs, date shifts) and infer (SEG identifiers) all call it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from imaging.errors import UsageError

log = logging.getLogger(__name__)

SECRET_ENV = "IMAGING_DEID_SECRET"
# A fixed, public key for the synthetic demo only: pseudonyms made with it are
# reversible by anyone who guesses an identifier, so it is refused unless asked for.
DEMO_SECRET = b"imaging-demo-key-not-for-patient-data"
MIN_SECRET_BYTES = 16


class SecretError(UsageError):
    """No usable project secret was configured."""


@dataclass(frozen=True)
class Pseudonymizer:
    """Derive stable pseudonyms from a secret.

    Args:
        secret: the project secret (at least 16 bytes).
        is_demo: True when the public demo key is in use (recorded in outputs).
    """

    secret: bytes
    is_demo: bool = False

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise SecretError(
                f"project secret is {len(self.secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
            )

    @classmethod
    def from_config(
        cls,
        secret_file: str | os.PathLike[str] | None = None,
        demo_key: bool = False,
        env: str = SECRET_ENV,
    ) -> Pseudonymizer:
        """Load the secret from a file, else the environment, else the demo key if allowed.

        Raises:
            SecretError: no secret file, no ``IMAGING_DEID_SECRET`` and ``demo_key`` false,
                or the secret is too short.
        """
        if secret_file:
            path = Path(secret_file)
            if not path.is_file():
                raise SecretError(f"secret_file '{path}' does not exist")
            return cls(path.read_bytes().strip())
        value = os.environ.get(env)
        if value:
            return cls(value.encode())
        if demo_key:
            log.warning("using the public demo key: pseudonyms are NOT protected (synthetic data only)")
            return cls(DEMO_SECRET, is_demo=True)
        raise SecretError(
            f"no project secret: set secret_file=PATH or the {env} environment variable "
            "(create one with `imaging secret new PATH`); the synthetic demo may pass demo_key=true"
        )

    def digest(self, value: str, kind: str) -> bytes:
        """HMAC-SHA256 of ``value``, domain-separated by ``kind`` (e.g. 'subject', 'uid')."""
        msg = kind.encode() + b"\x00" + value.strip().encode()
        return hmac.new(self.secret, msg, hashlib.sha256).digest()

    def key(self, value: str, kind: str, length: int = 16) -> str:
        """A lowercase hex pseudonym of ``length`` characters (64 bits by default)."""
        return self.digest(value, kind).hex()[:length]

    def uid(self, uid: str) -> str:
        """Map a DICOM UID to a valid ``2.25.<decimal>`` UID (128 bits, at most 44 chars)."""
        return "2.25." + str(int.from_bytes(self.digest(uid, "uid")[:16], "big"))

    def pseudo_id(self, value: str, kind: str, prefix: str) -> str:
        """A readable ID such as ``SUBJ-1a2b3c4d5e`` for PatientID-like attributes."""
        return f"{prefix}-{self.key(value, kind, 10)}"

    def date_shift_days(self, subject_value: str, max_days: int = 365) -> int:
        """A per-subject shift in ``[-max_days, -1]`` days (always into the past, never 0)."""
        n = int.from_bytes(self.digest(subject_value, "dateshift")[:8], "big")
        return -(1 + n % max_days)


def new_secret_file(path: str | os.PathLike[str]) -> Path:
    """Write a fresh 32-byte random secret (hex) with owner-only permissions."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex() + "\n")
    return out
