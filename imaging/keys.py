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
import re
from collections.abc import Callable, Iterable
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


# The last net for paths nobody registered (see Redactor): a quoted relative path after "file",
# any quoted or bare absolute path, and UIDs (4+ numeric components). Quote-delimited patterns
# end at an apostrophe inside a name (O'Brien), which is why registered paths go first, literally.
_FILE_REF = re.compile(r"(?P<what>(?:label |source )?file) '(?P<path>[^']*)'")
# A quoted path: has a '/', or is a Windows path; multi-valued DICOM values ('A\\B') are not.
_QUOTED_PATH = re.compile(r"""(?P<q>['"])(?P<path>[^'"\n]*/[^'"\n]*|[A-Za-z]:\\[^'"\n]*|\\\\[^'"\n]*)(?P=q)""")
_UID = re.compile(r"(?<![\w.])(?:\d+\.){3,}\d+(?![\w.])")
# Class and syntax UIDs name no one: an unknown one stays readable in an error.
_CLASS_TAGS = re.compile(r"\((0002,0002|0002,0010|0008,0016|0008,1150)\)[^(]*$")
# Pieces of a folder or file name the net also removes: split where a message may cut a name.
_NAME_CUTS = re.compile(r"['\"\\\n\r\t]")
_WORDLIKE = re.compile(r"[^\W\d_]{4,}")  # four letters in a row: a file name that may be a name
_MIN_PIECE = 4  # shorter pieces ("CT", "S1") are not names and would eat ordinary words
_HOLD = "\x00{}\x00"  # placeholder for a key already put in, so later passes leave it alone
_HELD = re.compile("\x00(\\d+)\x00")


def _spellings(path: str) -> list[str]:
    """A path as messages write it: as is, repr-escaped (newlines, non-ASCII) and JSON-escaped."""
    if path.isascii() and path.isprintable() and not any(c in path for c in "'\"\\"):
        return [path]  # the usual name: every spelling is the same
    # repr() escapes a ' only when the text also holds a ": a file name alone is spelt without the
    # escape, inside its full path with it. repr(path + '"') is always the single-quoted spelling.
    out = [path, path.encode("unicode_escape").decode("ascii"), json.dumps(path)[1:-1],
           json.dumps(path, ensure_ascii=False)[1:-1], repr(path)[1:-1], repr(path + '"')[1:-2]]
    return list(dict.fromkeys(out))


@dataclass
class Redactor:
    """Replace file paths and raw UIDs in messages by keyed names, remembering the originals.

    Catalog reasons, logs and reports on the dataset side must name a file or a
    series by keyed hash only (folder names of real exports often carry the
    patient's name); :attr:`found` maps each key to the relative path or UID so the
    owner-only ``<dataset>.private/names.jsonl`` lets an engineer find the file.

    Messages are composed by our code with the paths of the files it read, so the
    paths are known before the text: :meth:`know` registers them, and every spelling
    of a registered path (absolute or relative, quoted or bare, escaped) is replaced
    literally, whatever characters the names hold (apostrophes, quotes, commas,
    parentheses, newlines). What a message may still hold of a name (a piece cut
    at a quote, a folder named alone) is removed by the folder and file names of the
    registered paths. Patterns for paths nobody registered are the last net only.

    Attributes:
        pseudo: the keys' secret.
        root: the input root: absolute paths under it are named relative to it.
        found: key -> ``{"path": ...}`` or ``{"uid": ...}``.
    """

    pseudo: Pseudonymizer
    root: Path | None = None
    found: dict[str, dict[str, str]] = field(default_factory=dict)
    # folder -> names of its files; folder -> the spellings of its name (the cheap test of
    # _registered: a message names a file with its folder, so only named folders are searched)
    _known: dict[str, dict[str, None]] = field(default_factory=dict, repr=False)
    _folders: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _pieces: set[str] = field(default_factory=set, repr=False)
    _pending: list[str] = field(default_factory=list, repr=False)

    def know(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Register the files (absolute, or relative to :attr:`root`) messages may name.

        Indexed only when a message needs it: most series end with no reason to redact.
        """
        self._pending.extend(os.fspath(p) for p in paths)

    def _index(self) -> None:
        pending, self._pending = self._pending, []
        by_folder: dict[str, list[str]] = {}
        for path in pending:  # one split per file; relative folders once per folder (7,050 files: ~5 ms)
            head, _, name = path.rpartition(os.sep)
            by_folder.setdefault(head, []).append(name)
        for head, names in by_folder.items():
            folder = self._relative(head) if head else ""
            folder = "" if folder == "." else folder
            files = self._known.get(folder)
            if files is None:
                files = self._known[folder] = {}
                self._folders[folder] = tuple(_spellings(folder.rpartition(os.sep)[2]))
                for part in folder.split(os.sep):
                    self._add_pieces(part)
            files.update(dict.fromkeys(names))

    def _add_pieces(self, part: str) -> None:
        for piece in (part, *_NAME_CUTS.split(part)):
            if len(piece) >= _MIN_PIECE and any(c.isalpha() for c in piece):
                self._pieces.add(piece)

    def file_key(self, rel: str) -> str:
        """``file-<key>`` of a path relative to the input root (the key ingest's file rows use)."""
        rel = self._relative(rel)
        key = "file-" + self.pseudo.key(rel, "file")
        self.found.setdefault(key, {"path": rel})
        return key

    def uid_key(self, uid: str) -> str:
        key = "uid-" + self.pseudo.key(uid, "uid")
        self.found.setdefault(key, {"uid": uid})
        return key

    def _relative(self, path: str) -> str:
        if self.root is not None:
            root = str(self.root)
            if path == root:
                return "."
            if path.startswith(root + os.sep):
                return path[len(root) + 1 :]
        return path

    def __call__(self, text: str) -> str:
        """``text`` with every file path and non-standard UID replaced by its key."""
        if not text:
            return text
        held: list[str] = []

        def hold(key: str) -> str:
            held.append(key)
            return _HOLD.format(len(held) - 1)

        text = self._registered(text, hold)
        text = _FILE_REF.sub(lambda m: f"{m['what']} {hold(self.file_key(m['path']))}", text)
        text = _QUOTED_PATH.sub(lambda m: hold(self.file_key(m["path"])), text)
        if self.root is not None:
            # A bare path nobody registered ends at a space or punctuation here: registered paths
            # (any characters) went first; this net only keys what it can still see.
            root = re.escape(str(self.root))
            text = re.sub(root + r"(?:[/\\][^\s'\":,;\x00]*)?", lambda m: hold(self.file_key(m.group())), text)
        text = self._pieces_out(text)

        def uid(m: re.Match[str]) -> str:
            value = m.group()
            if _is_standard_uid(value) or _CLASS_TAGS.search(text[max(0, m.start() - 80) : m.start()]):
                return value
            return self.uid_key(value)

        text = _UID.sub(uid, text)
        return _HELD.sub(lambda m: held[int(m[1])], text)

    def _registered(self, text: str, hold: Callable[[str], str]) -> str:
        """Every spelling of every registered path, longest first (a folder never cuts a file's path)."""
        if self._pending:
            self._index()
        named = []
        for folder, files in self._known.items():
            if folder and not any(spelt in text for spelt in self._folders[folder]):
                continue
            for name in files:
                if any(spelt in text for spelt in _spellings(name)):
                    named.append(f"{folder}{os.sep}{name}" if folder else name)
                    if _WORDLIKE.search(name):  # IM0001, 1.2.840....dcm name no one; O'BRIEN.dcm may
                        self._add_pieces(name)
        for rel in sorted(named, key=len, reverse=True):
            token = hold(self.file_key(rel))
            forms = [str(self.root / rel)] if self.root is not None else []
            for form in (*forms, rel):
                for spelt in _spellings(form):
                    for q in ("'", '"'):
                        text = text.replace(f"{q}{spelt}{q}", token)
                    # Bare: an absolute path or one with a folder is distinctive; a bare "1" is not.
                    if os.sep in spelt or "/" in spelt:
                        text = text.replace(spelt, token)
        return text

    def _pieces_out(self, text: str) -> str:
        # A substring test per piece first: one regex of thousands of alternatives (a 4D series'
        # file names) costs ~100 ms a message; the few pieces present are replaced by word.
        present = [p for p in self._pieces if p in text]
        if not present:
            return text
        alternatives = "|".join(re.escape(p) for p in sorted(present, key=len, reverse=True))
        # Only where a path left it: next to a separator or a quote. A folder piece met as an
        # ordinary word of our own message ("burned" in "burned-in-annotation", "DICOM") is
        # not a leak, and eating it garbled the reason.
        return re.sub(rf"(?:(?<=[/\\'\"])(?:{alternatives})(?!\w)|(?<!\w)(?:{alternatives})(?=[/\\'\"]))",
                      "<name>", text)


def _is_standard_uid(value: str) -> bool:
    from pydicom.uid import UID_dictionary

    return value in UID_dictionary


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
