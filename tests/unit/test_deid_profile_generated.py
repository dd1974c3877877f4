"""imaging/deid/profile.py is what scripts/gen_deid_profile.py makes of the committed PS3.15 table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_deid_profile", ROOT / "scripts" / "gen_deid_profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_deid_profile"] = module
    spec.loader.exec_module(module)
    return module


def test_profile_is_current() -> None:
    gen = _generator()
    assert (ROOT / "imaging" / "deid" / "profile.py").read_text(encoding="utf-8") == gen.expected(), (
        "imaging/deid/profile.py is stale: run python scripts/gen_deid_profile.py"
    )
    assert gen.main(["--check"]) == 0


def test_committed_table_is_the_whole_standard_table() -> None:
    """Every row of the committed table is in the profile (the private row is the engine's)."""
    from imaging.deid.profile import MASKED_ROWS, ROWS

    table = json.loads((ROOT / "docs" / "standard" / "ps3.15_table_e.1-1.json").read_text(encoding="utf-8"))
    assert len(table) == 621
    by_tag = {f"{tag:08x}": basic for tag, _kw, basic, _o in ROWS}
    for row in table:
        ident = row["id"]
        if "x" in ident or not ident.isalnum():  # repeating groups, the private-attributes row
            continue
        assert by_tag[ident] == row["basicProfile"], row["name"]
    assert len(ROWS) + len(MASKED_ROWS) + 1 == len(table)
    # Spot checks against the printed standard (PS3.15 Table E.1-1), not the JSON.
    basic = {kw: b for _t, kw, b, _o in ROWS}
    assert basic["PatientName"] == "Z" and basic["PatientBirthDate"] == "Z"
    assert basic["PatientAge"] == "X" and basic["StudyInstanceUID"] == "U"
    assert basic["InstitutionName"] == "X/Z/D" and basic["PatientAddress"] == "X"


def test_stale_profile_is_detected(tmp_path: Path) -> None:
    gen = _generator()
    stale = tmp_path / "profile.py"
    text = (ROOT / "imaging" / "deid" / "profile.py").read_text(encoding="utf-8")
    stale.write_text(text.replace('"PatientName", "Z"', '"PatientName", "K"'), encoding="utf-8")
    assert stale.read_text(encoding="utf-8") != gen.expected(stale)
