"""What the audit looks for: canary tokens and original values, matched fast.

Thousands of original values (a link table of a large export) are compiled into
one trie-shaped regular expression, so a text is scanned once whatever the
number of values. Matching is case-insensitive. Values that begin or end with a
digit (IDs, UIDs, dates) only match as whole numbers: ``1.2.3.4`` does not hit
inside ``1.2.3.45``, ``20190315`` not inside a longer digit run. Words may be
separated by any run of spaces, ``^``, ``,``, ``_`` or ``-`` (DICOM writes
``O'Brien^Seamus``, a report ``O'Brien, Seamus``, a file name ``OBRIEN_SEAMUS``).
Identity values read from an export (``word`` needles) also need a boundary that
is not a letter or digit on both sides, so a three-letter given name never hits
inside a hex key or a longer word.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CANARY = "ZZPHI"
MIN_TOKEN_LEN = 4  # shorter values (sex 'F', age digits) would hit everywhere
# Folder names that are numbers, UIDs or generic export names (DICOM, S0000001,
# SE000001, IMG001, series_3) name nobody and would hit everywhere.
_NOT_A_NAME = re.compile(
    r"^(\d+|\d+(\.\d+)+|[A-Za-z]{0,4}[_-]?\d+|[0-9a-f]{8,}|[0-9a-f-]{36})$", re.IGNORECASE
)
GENERIC_FOLDERS = frozenset({
    "dicom", "dicomdir", "images", "image", "export", "exports", "data", "labels", "studies",
    "study", "series", "files", "patients", "patient", "export_dir", "pacs", "cdrom", "dvd",
})


@dataclass(frozen=True)
class Hit:
    """One finding. ``masked`` shows at most two characters and the length of the value.

    Attributes:
        where: file path (or ``mlflow:<experiment>/<run>``) of the finding.
        field: element, JSON path, column, line, param or tag name.
        rule: ``canary``, ``link-table``, ``manifest``, ``person-name`` or ``date``.
        masked: the masked value, safe to print.
    """

    where: str
    field: str
    rule: str
    masked: str


# Synthetic values (the canary token, a synth manifest) may show their first two
# characters; a real identity (a name, an ID, a date) shows nothing but its length.
_SHOWN_RULES = frozenset({"canary", "manifest"})
_SEPARATORS = re.compile(r"[\s^,_\-]+")
_SEPARATOR_CLASS = r"[\s^,_\-]+"


def _word_breaks() -> dict[int, str]:
    """Every character that is not a letter or digit in Latin-1, Latin Extended, general
    punctuation (curly quotes, dashes, NBSP) and CJK punctuation, mapped to a space."""
    ranges = (range(0x0250), range(0x2000, 0x2070), range(0x3000, 0x3040), [0xFEFF, 0xFFFD])
    return {c: " " for r in ranges for c in r if not chr(c).isalnum()}


_WORD_BREAKS = _word_breaks()


def _words(text: str) -> list[str]:
    """The words of a (lower-case) text: its runs of letters and digits, split by str.translate
    and str.split (C speed: ~5x a regex findall)."""
    return text.translate(_WORD_BREAKS).split()

WORD_INDEX_FROM = 300  # fewer word needles stay in the one regex (it is faster then)


def mask(value: str, rule: str = "canary") -> str:
    """``'ZZPHI^NAME'`` -> ``'ZZ********(10)'`` for synthetic rules, ``'**********(10)'``
    for real values: enough to count, never the value."""
    value = str(value)
    shown = value[:2] if rule in _SHOWN_RULES else "*" * min(2, len(value))
    return f"{shown}{'*' * min(8, max(0, len(value) - 2))}({len(value)})"


def normalize(text: str) -> str:
    """Lower case, every run of word separators one space: the form needles are kept in."""
    return _SEPARATORS.sub(" ", str(text).lower()).strip()


def default_canary() -> str:
    """The synthetic export's canary token (from :mod:`imaging.synth.canaries` when present)."""
    try:
        from imaging.synth.canaries import CANARY_TOKEN
    except ImportError:
        return DEFAULT_CANARY
    return str(CANARY_TOKEN)


def _trie_pattern(words: Iterable[str]) -> str:
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        alts = [
            (_SEPARATOR_CLASS if ch == " " else re.escape(ch)) + build(child)
            for ch, child in sorted(node.items())
            if ch
        ]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:  # a word ends here: the longer continuations are optional
            return ("(?:" + body + ")?") if len(alts) > 1 or len(body) > 1 else body + "?"
        return body

    return build(trie)


@dataclass
class Needles:
    """Values to find, each with the rule that reports it."""

    rules: dict[str, str] = field(default_factory=dict)  # normalized value -> rule
    words: set[str] = field(default_factory=set)  # values that match only as whole words

    def __post_init__(self) -> None:
        self._regex: re.Pattern[str] | None = None  # substring needles: one trie regex
        self._index: dict[str, list[str]] | None = None  # word needles by their longest word
        self._keys: frozenset[str] = frozenset()
        self._compiled: dict[str, re.Pattern[str]] = {}

    def add(
        self, values: Iterable[str], rule: str, *, min_len: int = MIN_TOKEN_LEN, word: bool = False
    ) -> Needles:
        """Add ``values`` under ``rule``; shorter than ``min_len`` (normalized) are dropped.

        A value with non-ASCII letters is also added as its UTF-8 bytes read as Latin-1,
        the form it has in a raw byte scan (checkpoints, unknown binaries).
        """
        for value in values:
            text = normalize(value)
            if len(text) < min_len:
                continue
            forms = [text]
            if not text.isascii():
                forms.append(normalize(text.encode("utf-8").decode("latin-1")))
            for form in forms:
                self.rules.setdefault(form, rule)
                if word:
                    self.words.add(form)
        self._index = None
        return self

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def max_len(self) -> int:
        return max((len(v) for v in self.rules), default=0)

    def _prepare(self) -> None:
        """Split the needles between the two matchers.

        One trie regex scans fast while the needles' first characters are few (UIDs
        start with ``1``/``2``, one canary token); with thousands of names, IDs and
        dates nearly every character starts some needle and it slows with their
        number (16,000 needles: ~4 MB/s). Word needles are then keyed by their
        longest word: the text's words (split at C speed) meet the set of keys, and
        only a key word found in the text runs its own small regex (compiled on first
        use) over the text. A needle next to a symbol outside the split table (``€``)
        is still found by a DICOM-aware reader's field, rarely by a raw scan.
        """
        keyed: dict[str, list[str]] = {}
        if len(self.words) > WORD_INDEX_FROM:
            for value in self.words:
                words = _words(value)
                if words:
                    keyed.setdefault(max(words, key=len), []).append(value)
        in_index = {v for group in keyed.values() for v in group}
        subs = [v for v in self.rules if v not in in_index]
        self._regex = re.compile(_trie_pattern(subs)) if subs else None
        self._index, self._keys, self._compiled = keyed, frozenset(keyed), {}

    def find(self, text: str) -> Iterator[tuple[str, str]]:
        """Yield ``(rule, matched text)`` for every value found in ``text``."""
        if not self.rules or not text:
            return
        if self._index is None:
            self._prepare()
        low = text.lower()
        if self._regex is not None:
            yield from self._find_substrings(text, low)
        if self._index:
            yield from self._find_words(text, low)

    def _find_substrings(self, text: str, low: str) -> Iterator[tuple[str, str]]:
        assert self._regex is not None
        pos = 0
        while (m := self._regex.search(low, pos)) is not None:
            token, start, end = m.group(), m.start(), m.end()
            pos = start + 1
            if not token:
                continue
            if (
                token[0].isdigit()
                and start > 0
                and (low[start - 1].isdigit() or low[start - 1] == ".")
            ):
                continue
            if token[-1].isdigit() and _dotted_digits_follow(low, end):
                continue
            key = normalize(token)
            if key in self.words and (
                (start > 0 and low[start - 1].isalnum()) or (end < len(low) and low[end].isalnum())
            ):
                continue  # part of a longer word or key
            pos = end
            yield self.rules.get(key, "canary"), text[start:end]

    def _find_words(self, text: str, low: str) -> Iterator[tuple[str, str]]:
        assert self._index is not None
        present = self._keys.intersection(_words(low))
        if not present:
            return
        spans: list[tuple[int, int]] = []
        for key in present:
            pattern = self._compiled.get(key)
            if pattern is None:  # whole words only: no letter or digit either side
                body = _trie_pattern(self._index[key])
                pattern = self._compiled[key] = re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])")
            for m in pattern.finditer(low):
                start, end = m.span()
                if start > 0 and low[start - 1] == "." and low[start].isdigit():
                    continue  # the tail of a dotted number (a UID, a version)
                if low[end - 1].isdigit() and _dotted_digits_follow(low, end):
                    continue
                spans.append((start, end))
        last_end = 0
        for start, end in sorted(spans, key=lambda span: (span[0], -span[1])):
            if start >= last_end:  # one hit per place: the longest needle that starts there
                last_end = end
                yield self.rules.get(normalize(low[start:end]), "canary"), text[start:end]


def _dotted_digits_follow(low: str, end: int) -> bool:
    """A digit or ``.digit`` right after ``end``: the match is part of a longer number."""
    after = low[end : end + 2]
    return bool(after) and (after[0].isdigit() or (after[0] == "." and after[1:2].isdigit()))


def load_link_table(path: str | os.PathLike[str]) -> list[str]:
    """Original values of a link table CSV (column ``original``, or every ``original*`` column).

    Raises:
        ValueError: the CSV has no column named ``original...``.
        FileNotFoundError: the file does not exist.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in reader.fieldnames or [] if c.lower().startswith("original")]
        if not columns:
            raise ValueError(
                f"link table '{path}': no column named 'original...' in {reader.fieldnames}"
            )
        return [row[c] for row in reader for c in columns if row.get(c)]


def load_manifest(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(canary strings incl. dates/times, original UIDs) from a synthetic export's ``manifest.json``.

    Raises:
        ValueError: the file is not a synth manifest (no ``canaries`` list).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("canaries"), list):
        raise ValueError(f"manifest '{path}': no 'canaries' list (not a synthetic export manifest)")
    values = [str(v) for v in data["canaries"]]
    if data.get("canary_token"):
        values.append(str(data["canary_token"]))
    return values, [str(u) for u in data.get("uids", [])]


def folder_names(root: str | os.PathLike[str]) -> list[str]:
    """Every folder name under ``root`` that could name someone (the export's own folders).

    Real PACS exports often name folders after the patient (``DOE^JOHN_12345678``), so
    each folder component that is not a pure number, a UID, a hex key or a generic
    export name (``DICOM``, ``S0000001``) is a needle; a name with separators is also
    split into its parts (``DOE``, ``JOHN``) of four or more characters.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"audit: export '{base}' is not a folder")
    out: set[str] = set()
    for _dirpath, dirnames, _files in os.walk(base):
        for name in dirnames:
            if _NOT_A_NAME.match(name) or name.lower() in GENERIC_FOLDERS:
                continue
            out.add(name)
            for part in re.split(r"[\s^_.,;+-]+", name):
                if not _NOT_A_NAME.match(part) and part.lower() not in GENERIC_FOLDERS:
                    out.add(part)
    return sorted(v for v in out if len(v) >= MIN_TOKEN_LEN)


def as_needles(tokens: Needles | Iterable[str]) -> Needles:
    """``tokens`` as a :class:`Needles` (plain strings are reported under the ``canary`` rule)."""
    return tokens if isinstance(tokens, Needles) else Needles().add(tokens, "canary")


def build_needles(
    canaries: Iterable[str] = (),
    link_tables: Iterable[str | os.PathLike[str]] = (),
    manifests: Iterable[str | os.PathLike[str]] = (),
    exports: Iterable[str | os.PathLike[str]] = (),
) -> Needles:
    """One matcher for canary tokens, link-table originals, manifest values, and each export's
    folder names and identities read from its headers (:mod:`imaging.audit.identities`)."""
    from imaging.audit.identities import export_identities, identity_needles

    needles = Needles().add(canaries, "canary")
    for export in exports:
        needles.add(folder_names(export), "folder-name")
        for value, rule, minimum in identity_needles(export_identities(export)):
            needles.add([value], rule, min_len=minimum, word=True)
    for table in link_tables:
        needles.add(load_link_table(table), "link-table")
    for manifest in manifests:
        values, uids = load_manifest(manifest)
        needles.add(values, "manifest").add(uids, "manifest")
    return needles
