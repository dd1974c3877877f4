"""Messages on the dataset side name files by key; the private names file leads back."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

from imaging.keys import FileNames, Pseudonymizer, write_private_names

PS = Pseudonymizer(b"naming-test-secret-0123456789")
ROOT = Path("/data/exports/2024")


def _oracle(rel: str) -> str:
    """The file key from its definition (HMAC-SHA256 of b'file\\x00' + path, 16 hex), not from the code."""
    return "file-" + hmac.new(PS.secret, b"file\x00" + rel.encode(), hashlib.sha256).hexdigest()[:16]


def test_files_are_named_by_key_relative_to_the_root() -> None:
    names = FileNames(PS, ROOT)
    absolute = names.file_key(str(ROOT / "DOE^JOHN_123" / "S1" / "IM7"))
    assert absolute == names.file_key("DOE^JOHN_123/S1/IM7") == _oracle("DOE^JOHN_123/S1/IM7")
    assert names.file_key(ROOT / "O'BRIEN, Seamus (1957)" / "IM 8") == _oracle("O'BRIEN, Seamus (1957)/IM 8")
    assert names.found == {_oracle("DOE^JOHN_123/S1/IM7"): {"path": "DOE^JOHN_123/S1/IM7"},
                           _oracle("O'BRIEN, Seamus (1957)/IM 8"): {"path": "O'BRIEN, Seamus (1957)/IM 8"}}


def test_a_key_leads_back_to_its_file_through_the_private_names_file(tmp_path: Path) -> None:
    names = FileNames(PS, ROOT)
    key = names.file_key(str(ROOT / "D'ANGELO\nRosa" / "IM,1"))
    path = write_private_names(tmp_path / "names.jsonl", names.found)
    rows = {json.loads(line)["key"]: json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()}
    assert rows[key]["path"] == "D'ANGELO\nRosa/IM,1"


def test_private_names_file_is_owner_only_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "private" / "names.jsonl"
    write_private_names(path, {"file-aa": {"path": "a/b"}})
    write_private_names(path, {"uid-bb": {"uid": "1.2.3.4"}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"key": "file-aa", "path": "a/b"}, {"key": "uid-bb", "uid": "1.2.3.4"}]
