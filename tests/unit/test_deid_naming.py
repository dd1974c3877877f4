"""Messages on the dataset side name files and UIDs by key; the private names file leads back."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from imaging.keys import Pseudonymizer, Redactor, write_private_names

PS = Pseudonymizer(b"naming-test-secret-0123456789")
ROOT = Path("/data/exports/2024")


def test_paths_and_uids_become_keys() -> None:
    redact = Redactor(PS, ROOT)
    text = redact(
        "file 'DOE^JOHN_123/S1/IM7' frame 2: (0020,0037) missing; "
        "label file '1.2.826.0.1.3680043.2.1125.7.nii.gz': unreadable; "
        f"[Errno 13] Permission denied: '{ROOT}/DOE^JOHN_123/S1/IM8'; "
        f"seen under {ROOT}/SMITH^ANNA/S2, series 1.2.826.0.1.3680043.2.1125.9"
    )
    for secret in ("DOE", "JOHN", "SMITH", "ANNA", str(ROOT), "1.2.826.0.1.3680043.2.1125"):
        assert secret not in text, secret
    assert text.startswith(f"file file-{PS.key('DOE^JOHN_123/S1/IM7', 'file')} frame 2: (0020,0037) missing")
    assert redact.found[f"file-{PS.key('DOE^JOHN_123/S1/IM8', 'file')}"] == {"path": "DOE^JOHN_123/S1/IM8"}
    assert {"uid": "1.2.826.0.1.3680043.2.1125.9"} in redact.found.values()


def test_values_that_name_nobody_stay_readable() -> None:
    redact = Redactor(PS, ROOT)
    for text in (
        "localizer: (0008,0008) ImageType = 'ORIGINAL\\PRIMARY\\LOCALIZER'",
        "unsupported transfer syntax (0002,0010) TransferSyntaxUID = '1.2.3.4.5.6.7.8.9.10'",
        "(0002,0010) = '1.2.840.10008.1.2.4.50' (JPEG Baseline)",
        "spacing 0.7x0.7x5 resampled, tilt 12.5 deg",
    ):
        assert redact(text) == text
    assert redact.found == {}


def test_private_names_file_is_owner_only_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "private" / "names.jsonl"
    write_private_names(path, {"file-aa": {"path": "a/b"}})
    write_private_names(path, {"uid-bb": {"uid": "1.2.3.4"}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"key": "file-aa", "path": "a/b"}, {"key": "uid-bb", "uid": "1.2.3.4"}]
