"""PHI canaries: every PHI attribute carries the token, and the manifest lists every value written."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from imaging.synth.canaries import (
    CANARY_TOKEN,
    DATE_FIELDS,
    PRIVATE_CREATOR,
    PRIVATE_CREATOR_2,
    PRIVATE_GROUP,
    PRIVATE_GROUP_2,
    TEXT_FIELDS,
    TIME_FIELDS,
)

TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT"}


@pytest.fixture(scope="module")
def export(synth_export: Path) -> tuple[Path, dict]:
    """The session's shared export (tests/fixtures/datasets.py: 2 subjects, all cases)."""
    return synth_export, json.loads((synth_export / "manifest.json").read_text())


def _all_files(manifest: dict) -> list[tuple[dict, str]]:
    return [(s, f) for s in manifest["series"] for f in s["files"]]


def test_image_instances_carry_every_canary(export: tuple[Path, dict]) -> None:
    root, manifest = export
    canaries = set(manifest["canaries"])
    images = [(s, f) for s, f in _all_files(manifest) if s["modality"] in ("CT", "MR")]
    assert len(images) > 100
    for series, rel in images:
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        for keyword in (*TEXT_FIELDS, "SeriesDescription"):
            value = str(ds.data_element(keyword).value)
            assert CANARY_TOKEN in value and value in canaries, (rel, keyword)
        for keyword in DATE_FIELDS + TIME_FIELDS:
            assert str(ds.data_element(keyword).value) in canaries, (rel, keyword)
        assert ds.PatientID == series["patient_id"]
        # private blocks (creator + a canary value)
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        assert CANARY_TOKEN in PRIVATE_CREATOR and CANARY_TOKEN in block[0x01].value
        assert block[0x01].value in canaries
        acme = ds.private_block(PRIVATE_GROUP_2, PRIVATE_CREATOR_2)
        assert CANARY_TOKEN in acme[0x10].value and acme[0x10].value in canaries
        # nested sequence items
        request = ds.RequestAttributesSequence[0]
        assert CANARY_TOKEN in request.RequestedProcedureDescription
        assert CANARY_TOKEN in request.ScheduledProcedureStepDescription
        assert CANARY_TOKEN in ds.ProcedureCodeSequence[0].CodeMeaning
        # realistic demographics, not canaries
        assert ds.PatientSex in ("F", "M") and ds.PatientAge.endswith("Y")
        assert 1.4 < float(ds.PatientSize) < 2.1 and 40 < float(ds.PatientWeight) < 130


def test_every_written_phi_value_is_listed(export: tuple[Path, dict]) -> None:
    """Any text holding the token, any date/time, any instance UID in any file is in the manifest."""
    root, manifest = export
    canaries, uids = set(manifest["canaries"]), set(manifest["uids"])
    seen_token = 0
    for series, rel in _all_files(manifest):
        if rel in series.get("bad_files", []) and "truncated" in series["flags"]:
            continue
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        for elem in ds.iterall():
            if elem.value in (None, ""):
                continue
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            for value in map(str, values):
                if elem.VR in TEXT_VRS and CANARY_TOKEN in value:
                    seen_token += 1
                    assert value in canaries, (rel, elem.keyword or elem.tag, value)
                elif elem.VR in ("DA", "TM", "DT"):
                    assert value in canaries, (rel, elem.keyword, value)
                elif elem.VR == "UI" and value not in pydicom.uid.UID_dictionary:
                    assert value in uids, (rel, elem.keyword, value)
    assert seen_token > 1000


def test_person_names_and_ids_fit_their_vr(export: tuple[Path, dict]) -> None:
    root, manifest = export
    ds = pydicom.dcmread(root / manifest["series"][0]["files"][0], stop_before_pixels=True)
    max_len = {"SH": 16, "LO": 64, "CS": 16, "AE": 16, "DS": 16, "IS": 12, "UI": 64}
    for elem in ds.iterall():
        if elem.VR in max_len and elem.value not in (None, ""):
            for value in list(elem.value) if elem.VM > 1 else [elem.value]:
                text = value if isinstance(value, str) else str(value)
                assert len(text) <= max_len[elem.VR], (elem.keyword, value)
    assert str(ds.PatientName).startswith(f"{CANARY_TOKEN}^NAME^")
    other = pydicom.dcmread(root / manifest["series"][-1]["files"][0], stop_before_pixels=True)
    assert other.PatientID != ds.PatientID and other.PatientName != ds.PatientName


def test_canaries_in_folders_preamble_and_private_sequence(export: tuple[Path, dict]) -> None:
    """Where real exports leak beyond the attributes: folder names, the preamble, private items."""
    from imaging.synth.canaries import PRIVATE_SEQUENCE_ELEMENT

    root, manifest = export
    canaries = set(manifest["canaries"])
    images = [(s, f) for s, f in _all_files(manifest) if s["modality"] in ("CT", "MR")]
    folders = {Path(rel).parts[1] for _s, rel in images}
    assert folders and all(f in canaries for f in folders)  # every patient folder is a canary
    truncated = [s for s in manifest["series"] if "truncated" in s["flags"]]
    assert truncated and all(Path(b).parts[1] in canaries for s in truncated for b in s["bad_files"])
    for _series, rel in images[:20]:
        with open(root / rel, "rb") as fh:
            raw = fh.read(132)  # the raw bytes, not pydicom's view of them
        assert raw[128:] == b"DICM"
        text = raw[:128].rstrip(b"\0").decode("ascii")
        assert CANARY_TOKEN in text and text in canaries
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        item = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[PRIVATE_SEQUENCE_ELEMENT].value[0]
        assert CANARY_TOKEN in item.ImageComments and item.ImageComments in canaries
        inner = item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x01].value
        assert CANARY_TOKEN in inner and inner in canaries
