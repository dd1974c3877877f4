"""Hostile file names never cross into dataset-side text: the reading code composes its reasons with
file keys (a real CT under hostile names, failing at each raise site), and the exception boundary
keeps a library's text private (type + tag on the dataset side, raw text in errors.jsonl)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.tag import Tag

from imaging.boundary import ERRORS_FILE, failure_reason
from imaging.dicom.header import header_row
from imaging.dicom.labels import LabelError, LabelTable
from imaging.dicom.pixels import VolumeError, read_file_frames
from imaging.dicom.seg_labels import seg_to_labels
from imaging.dicom.series import plan_series
from imaging.keys import FileNames, Pseudonymizer
from imaging.layout import private_dir_of

PS = Pseudonymizer(b"boundary-test-secret-0123456789")
ROOT = Path("/exports/Müller, Jürgen (12.03.1957)")
CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
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


def _oracle_key(rel: str) -> str:
    """``file-<key>`` computed here from the HMAC definition, not by the code under test."""
    return "file-" + hmac.new(PS.secret, b"file\x00" + rel.encode(), hashlib.sha256).hexdigest()[:16]


def _series(root: Path, rels: list[str]) -> list[dict[str, Any]]:
    """GE's real 5-slice CT copied under ``rels``: its index rows, as the scan writes them."""
    rows = []
    for rel, src in zip(rels, sorted(CT5N.iterdir()), strict=False):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        rows.append({**header_row(str(path)), "path": str(path)})
    return rows


def _reasons(root: Path, rels: list[str]) -> dict[str, str]:
    """The reasons the reading code composes for each way a file of the series can fail."""
    names = FileNames(PS, root)
    rows = _series(root, rels)
    broken: dict[str, list[dict[str, Any]]] = {
        "localizer": [{**r, "image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"]} for r in rows],
        "transfer syntax": [{**r, "ts": "1.2.3.4"} for r in rows],
        "two patients": [{**r, "patient_id": f"P{i}"} for i, r in enumerate(rows)],
        "no position": [{**r, "ipp": None} for r in rows],
        "secondary capture": [{**r, "sop_class": "1.2.840.10008.5.1.4.1.1.7"} for r in rows],
    }
    out = {what: plan_series(series, names.file_key).reason for what, series in broken.items()}
    with open(rows[0]["path"], "r+b") as fh:  # a truncated file: the pixel reader's error
        fh.truncate(fh.seek(0, 2) - 1000)
    with pytest.raises(VolumeError) as truncated:
        read_file_frames(rows[0]["path"], rows[0], names.file_key(rows[0]["path"]))
    out["truncated"] = str(truncated.value)
    plan = plan_series(rows[1:], names.file_key)
    with pytest.raises(LabelError) as not_seg:  # a CT given as a SEG: the label reader's error
        seg_to_labels(rows[1]["path"], plan.volumes[0].grid, LabelTable(), names.file_key(rows[1]["path"]))
    out["not a SEG"] = str(not_seg.value)
    assert set(names.found) <= {_oracle_key(r) for r in rels}  # only the files the reasons name
    for key, rec in names.found.items():  # the private names file leads back to each file
        assert key == _oracle_key(rec["path"]) and (root / rec["path"]).is_file()
    return out


@pytest.mark.parametrize("rel", HOSTILE)
def test_reasons_name_hostile_files_by_key_only(rel: str, tmp_path: Path) -> None:
    root = tmp_path / "Müller, Jürgen (12.03.1957)"
    rels = [f"{rel}{n}" for n in range(5)]
    reasons = _reasons(root, rels)
    assert len(reasons) == 7 and all(reasons.values()), reasons
    for what, text in reasons.items():
        for piece in [*_pieces(rel), "Müller", "Jürgen", "12.03.1957", str(tmp_path)]:
            assert piece not in text, (what, piece, text)
        assert any(_oracle_key(r) in text for r in rels), (what, text)
    assert reasons["no position"].startswith(f"file {_oracle_key(rels[0])}: missing (0020,0032)"), reasons


# Letters, and the characters that end, split or escape a name in a message.
_ALPHABET = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") + list("äöüßéèñçøåŁŚ李小龙王Иванов") \
    + ["'", '"', ",", "(", ")", " ", "\n", "^", "_", "-", ".", "%20", "%27", "\\", "\t", "…"]


def _random_name(rng: random.Random) -> str:
    n = rng.choice([1, 3, 8, 20, 60, 180])
    name = "".join(rng.choice(_ALPHABET) for _ in range(n)).strip()
    while len(name.encode()) > 240:  # a file name is at most 255 bytes here (ext4, tmpfs)
        name = name[:-1].strip()
    return name if name not in ("", ".", "..") else "X"


@pytest.mark.parametrize("seed", range(12))
def test_random_hostile_paths_leave_no_piece(seed: int, tmp_path: Path) -> None:
    """A seeded property test (hypothesis is not installed): random folders and files, every raise site."""
    rng = random.Random(seed)
    rels = ["/".join(_random_name(rng) for _ in range(rng.randint(1, 3))) + f"{n}" for n in range(5)]
    reasons = _reasons(tmp_path / "export", rels)
    for what, text in reasons.items():
        template = re.sub(r"file-[0-9a-f]{16}", "", text)
        for rel in rels:
            for piece in _pieces(rel):
                if piece not in ("file", "frame"):
                    assert piece not in template, (what, piece, text)
        assert any(_oracle_key(r) in text for r in rels), (what, text)


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
    assert private_dir_of(tmp_path / "pred") == tmp_path / "pred.private"
    assert private_dir_of(tmp_path / "pred", tmp_path / "ds.private") == tmp_path / "ds.private"
