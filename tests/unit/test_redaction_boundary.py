"""Hostile file names never cross into dataset-side text: the Redactor (registered paths, literally)
and the exception boundary (type + tag on the dataset side, raw text in the private errors.jsonl)."""

from __future__ import annotations

import json
import random
import re
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.tag import Tag

from imaging.boundary import ERRORS_FILE, failure_reason, private_side
from imaging.keys import Pseudonymizer, Redactor

PS = Pseudonymizer(b"boundary-test-secret-0123456789")
ROOT = Path("/exports/Müller, Jürgen (12.03.1957)")
# Folder and file names the way real exports and hostile users spell them.
HOSTILE = [
    "O'BRIEN^SEAMUS_19570312/CT \"thorax\" (1)/IM0001",
    "D'ANGELO, Rosa (1961-07-02)/séries 2/IM 2",
    "李^小龙 19400127/Серия 3/IM3",
    "NEW\nLINE^PATIENT 19800101/s/IM4",
    "PERCENT%20ENCODED%27NAME_19700101/s/IM5",
    ("VERY_LONG_" + "KOWALCZYK-WISNIEWSKA^ANNA-MARIA_" * 6) + "19550505/s/IM6",
]


def _pieces(rel: str) -> list[str]:
    """Every folder/file name of ``rel`` and its pieces cut at quotes and newlines (4+ characters)."""
    out = []
    for part in Path(rel).parts:
        out += [p for p in [part, *re.split(r"['\"\n]", part)] if len(p) >= 4 and any(c.isalpha() for c in p)]
    return out


def _message_shapes(rel: str) -> list[str]:
    """How our code and libraries name a file in a message (the oracle: the strings as written)."""
    absolute = str(ROOT / rel)
    return [
        f"file '{rel}' frame 2: missing (0020,0037) ImageOrientationPatient",
        f"[Errno 2] No such file or directory: '{absolute}'",
        f'cannot read "{absolute}": truncated',
        f"reading {Path(absolute)!r} failed",
        f"{json.dumps(absolute)} is not DICOM",
        f"seen at {absolute}, then gone",
        f"{absolute.encode('unicode_escape').decode()}: bad preamble",
    ]


@pytest.mark.parametrize("rel", HOSTILE)
def test_registered_paths_leave_no_piece_of_a_name(rel: str) -> None:
    redact = Redactor(PS, ROOT)
    redact.know([ROOT / h for h in HOSTILE])
    key = "file-" + PS.key(rel, "file")
    for message in _message_shapes(rel):
        text = redact(message)
        for piece in [*_pieces(rel), "Müller", "Jürgen", "12.03.1957"]:
            assert piece not in text, (piece, text)
        assert key in text, text
    assert redact.found[key] == {"path": rel}  # the private names file leads back to the file
    assert redact(_message_shapes(rel)[0]).startswith(f"file {key} frame 2: missing (0020,0037)")


def test_pieces_of_a_registered_name_are_removed_wherever_they_stand() -> None:
    redact = Redactor(PS, ROOT)
    redact.know(HOSTILE)
    # A piece cut at an apostrophe (what the quote-delimited pattern left behind), a folder alone.
    text = redact("left: BRIEN^SEAMUS_19570312/CT; folder D'ANGELO, Rosa (1961-07-02) named alone")
    assert "BRIEN^SEAMUS_19570312" not in text and "Rosa (1961-07-02)" not in text, text
    # Values that name nobody stay readable.
    plain = "(0028,0030) PixelSpacing = [0.488281, 0.488281]; spacing 0.7x0.7x5 resampled"
    assert redact(plain) == plain


def test_library_text_stays_private_and_the_row_gets_type_and_tag(tmp_path: Path) -> None:
    source = ROOT / HOSTILE[0]
    try:
        raise ValueError(f"Plane orientation of '{source}' is not orthogonal: ImageOrientationPatient "
                         "[1.0, 0.004, 0.0, 0.0, 1.0, 0.0]")
    except ValueError as exc:
        reason = failure_reason(exc, stage="seg", where="abc123", private_dir=tmp_path / "out.private")
    tag = Tag("ImageOrientationPatient")  # the oracle: pydicom's dictionary
    assert reason == (f"seg: ValueError at ({tag.group:04X},{tag.element:04X}) ImageOrientationPatient "
                      "(details in the private errors.jsonl)")
    errors = tmp_path / "out.private" / ERRORS_FILE
    assert stat.S_IMODE(errors.stat().st_mode) == 0o600
    rec = json.loads(errors.read_text(encoding="utf-8").splitlines()[-1])
    assert rec["where"] == "abc123" and rec["type"] == "ValueError" and str(source) in rec["message"]
    assert "Traceback" in rec["traceback"]


def test_tag_from_a_keyerror_and_from_a_tag_number(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    with pytest.raises(AttributeError) as missing:
        ds.PixelSpacing  # noqa: B018 - pydicom's own message names the keyword
    assert failure_reason(missing.value, stage="seg", where="k", private_dir=tmp_path) \
        .startswith("seg: AttributeError at (0028,0030) PixelSpacing")
    by_number = KeyError("(0020,0032) absent from /x/O'Hara/IM1")
    assert failure_reason(by_number, stage="read", where="k", private_dir=tmp_path) \
        .startswith("read: KeyError at (0020,0032) ImagePositionPatient")
    assert failure_reason(OSError("disk"), stage="write", where="k", private_dir=tmp_path) \
        == "write: OSError (details in the private errors.jsonl)"
    assert len((tmp_path / ERRORS_FILE).read_text(encoding="utf-8").splitlines()) == 3


def test_our_own_errors_cross_as_they_are(tmp_path: Path) -> None:
    class Ours(Exception):
        pass

    assert failure_reason(Ours("seg: no foreground"), stage="seg", where="k", private_dir=tmp_path,
                          own=(Ours,)) == "seg: no foreground"
    assert not (tmp_path / ERRORS_FILE).exists()


def test_the_private_side_defaults_beside_the_outputs(tmp_path: Path) -> None:
    assert private_side(None, tmp_path / "pred") == tmp_path / "pred.private"
    assert private_side(tmp_path / "ds.private", tmp_path / "pred") == tmp_path / "ds.private"


# Letters, and the characters that end, split or escape a name in a message.
_ALPHABET = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") + list("äöüßéèñçøåŁŚ李小龙王Иванов") \
    + ["'", '"', ",", "(", ")", " ", "\n", "^", "_", "-", ".", "%20", "%27", "\\", "\t", "…"]


def _random_name(rng: random.Random) -> str:
    n = rng.choice([1, 3, 8, 20, 60, 180])
    name = "".join(rng.choice(_ALPHABET) for _ in range(n)).strip()
    return name if name not in ("", ".", "..") else "X"


@pytest.mark.parametrize("seed", range(40))
def test_random_hostile_paths_leave_no_piece(seed: int) -> None:
    """A seeded property test (hypothesis is not installed): 40 exports of 3 random paths each."""
    rng = random.Random(seed)
    rels = ["/".join(_random_name(rng) for _ in range(rng.randint(1, 3))) for _ in range(3)]
    redact = Redactor(PS, ROOT)
    redact.know(ROOT / r for r in rels)
    for rel in rels:
        for message in _message_shapes(rel):
            text = redact(message)
            template = message.replace(str(ROOT / rel), "").replace(rel, "")
            for piece in _pieces(rel):
                if piece not in template and piece not in ("file", "frame"):
                    assert piece not in text, (piece, message, text)
            assert "file-" + PS.key(rel, "file") in text, (message, text)
