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
import json
import logging
import os
from dataclasses import dataclass, field
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


def subject_identity(patient_id: str, issuer: str = "", study_uid: str = "") -> tuple[str, bool]:
    """The value a subject key is derived from, and whether it is a per-study stand-in.

    A subject is (IssuerOfPatientID, PatientID): two hospitals may give the same
    number to different people. Without an issuer the PatientID alone is used (the
    keys of earlier releases stay valid). An empty PatientID cannot tell patients
    apart; pooling all of them into one subject would share one date shift and mix
    patients across train/validation splits, so each *study* becomes its own
    subject instead (the second value is True; callers log a warning). One patient's
    studies then count as several subjects: safe for privacy and for splits, at the
    cost of longitudinal linkage.
    """
    patient_id, issuer = str(patient_id or "").strip(), str(issuer or "").strip()
    if not patient_id:
        return f"\x1estudy\x1e{str(study_uid or '').strip()}", True
    return (f"{issuer}\x1e{patient_id}" if issuer else patient_id), False


def new_secret_file(path: str | os.PathLike[str]) -> Path:
    """Write a fresh 32-byte random secret (hex) with owner-only permissions."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(32).hex() + "\n")
    return out


@dataclass
class FileNames:
    """Keyed names of the files a message names, remembering each original on the private side.

    Catalog reasons, logs and reports on the dataset side name a file by keyed hash only
    (folder names of real exports often carry the patient's name and birth date). The
    message is *composed* with the key (``file file-<key>: ...``): the reading code is
    handed :meth:`file_key` and never sees a path it could write, so no pattern has to
    find a path in the text afterwards (one that did missed names with an apostrophe).
    :attr:`found` maps each key handed out to the relative path, which ingest writes to
    the owner-only ``<dataset>.private/names.jsonl``: an engineer finds the file from the key
    (every file the reading code was handed a name for: the files the reasons name and a few more).

    Attributes:
        pseudo: the keys' secret.
        root: the input root: paths are keyed relative to it (the same key ingest's file rows use).
        found: key -> ``{"path": <path relative to root>}``.
    """

    pseudo: Pseudonymizer
    root: Path | None = None
    found: dict[str, dict[str, str]] = field(default_factory=dict)

    def file_key(self, path: str | os.PathLike[str]) -> str:
        """``file-<key>`` of a path (absolute, or relative to :attr:`root`)."""
        rel = self.relative(path)
        key = "file-" + self.pseudo.key(rel, "file")
        self.found.setdefault(key, {"path": rel})
        return key

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to :attr:`root` (as ``os.path.relpath``), or as given without a root."""
        text = os.fspath(path)
        if self.root is None or not os.path.isabs(text):
            return text
        return os.path.relpath(text, self.root)


def write_private_names(path: str | os.PathLike[str], found: dict[str, dict[str, str]]) -> Path:
    """Merge ``found`` into the owner-only JSONL ``path`` (one ``{"key":..., "path"|"uid":...}`` a line)."""
    out = Path(path)
    known: dict[str, dict[str, str]] = {}
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                known[rec.pop("key")] = rec
    known.update(found)
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for key in sorted(known):
            fh.write(json.dumps({"key": key, **known[key]}, sort_keys=True) + "\n")
    os.replace(tmp, out)
    os.chmod(out, 0o600)
    return out
