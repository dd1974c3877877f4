"""IndexRow, the typed ingest index row: its keys are the index schema's columns, and the rows the
header reader writes for real vendor files (pydicom's and nibabel's test data) hold only declared
keys, each of its declared type, read straight from the file and back from the SQLite index."""

from __future__ import annotations

import gzip
import sqlite3
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import nibabel
import pydicom

from imaging.dicom import scan as scan_mod
from imaging.dicom.header import header_row
from imaging.dicom.index_row import FrameInfo, IndexRow, MosaicTiles, SliceRow
from imaging.dicom.series import plan_series

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DICOM = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


def _keys(td: Any) -> set[str]:
    return set(td.__required_keys__) | set(td.__optional_keys__)


def _problems(value: Any, hint: Any, where: str) -> list[str]:
    """Where ``value`` is not of the declared type ``hint`` (mypy's reading: an int is a float)."""
    if hint is Any:
        return []
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        found = [_problems(value, h, where) for h in get_args(hint)]
        return [] if any(not f for f in found) else [f"{where}: {value!r} is not {hint}"]
    if origin is Literal:
        return [] if value in get_args(hint) else [f"{where}: {value!r} not in {get_args(hint)}"]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} is not {hint.__name__}"]
        hints = get_type_hints(hint)
        out = [f"{where}.{k}: undeclared key" for k in value if k not in hints]
        for k, v in value.items():
            if k in hints:
                out += _problems(v, hints[k], f"{where}.{k}")
        return out
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__} is not a list"]
        return [p for i, v in enumerate(value) for p in _problems(v, get_args(hint)[0], f"{where}[{i}]")]
    if origin is dict:
        kt, vt = get_args(hint)
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} is not a dict"]
        return [p for k, v in value.items() for p in _problems(k, kt, f"{where} key") + _problems(v, vt, f"{where}[{k}]")]
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is type(None):
        ok = value is None
    else:
        ok = isinstance(value, hint)
    return [] if ok else [f"{where}: {value!r} ({type(value).__name__}) is not {hint}"]


def _vendor_files() -> list[Path]:
    files = sorted(PYDICOM_FILES.glob("*.dcm")) + sorted(NIBABEL_DICOM.glob("*.dcm"))
    assert len(files) > 80  # the wheels' corpora: CT, MR, enhanced MR, mosaics, SEG-less RT, SC, SR...
    return files


def test_index_row_keys_are_the_index_columns() -> None:
    assert len(scan_mod.COLUMNS) == len(set(scan_mod.COLUMNS))
    assert _keys(IndexRow) == set(scan_mod.COLUMNS)
    # A slice's row adds only where a mosaic's tiles lie; nothing else outside the schema.
    assert _keys(SliceRow) - _keys(IndexRow) == {"mosaic"}


def test_json_columns_are_the_structured_ones() -> None:
    """decode_row decodes exactly the columns declared as lists or dicts (read_chunk encodes those)."""
    hints = get_type_hints(IndexRow)
    structured = {k for k, h in hints.items() if any(get_origin(a) in (list, dict) for a in (h, *get_args(h)))}
    assert structured == set(scan_mod._JSON_COLUMNS)


def test_rows_of_vendor_files_match_the_declaration() -> None:
    hints = get_type_hints(IndexRow)
    kinds: set[str] = set()
    with_frames = 0
    problems: list[str] = []
    for path in _vendor_files():
        row = header_row(str(path))
        kinds.add(str(row["kind"]))
        with_frames += bool(row.get("frames"))
        problems += [f"{path.name}: {k}: undeclared key" for k in row if k not in hints]
        problems += _problems(row, IndexRow, path.name)
    assert problems == []
    # the corpus exercises the enhanced (per-frame) path and more than one kind of row
    assert with_frames >= 2
    assert {"dicom", "unreadable"} <= kinds


def test_invalid_value_makes_the_file_unreadable_not_the_scan_fail() -> None:
    """The type check above found it: badVR.dcm's NumberOfFrames IS '1A' raised ValueError out of
    the header reader (outside its try), which stops a whole scan; now that file's row says why."""
    assert pydicom.dcmread(PYDICOM_FILES / "badVR.dcm", force=True)["NumberOfFrames"].value == "1A"
    row = header_row(str(PYDICOM_FILES / "badVR.dcm"))
    assert row == {"kind": "unreadable", "error": "unreadable: ValueError: invalid literal for int() with base 10: '1A'"}


def test_rows_from_the_sqlite_index_match_the_declaration(tmp_path: Path) -> None:
    """What the series builder reads: rows stored by the scan and decoded by decode_row."""
    stats = scan_mod.scan(PYDICOM_FILES, tmp_path / "index.sqlite", workers=1, progress=False)
    assert stats.n_dicom > 50 and stats.n_unreadable > 0  # (badVR.dcm among them: the scan goes on)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.row_factory = sqlite3.Row
    rows = [scan_mod.decode_row(r) for r in con.execute("SELECT * FROM files")]
    con.close()
    assert len(rows) == stats.n_files
    for row in rows:
        assert set(row) == set(scan_mod.COLUMNS)
        if row["kind"] == "dicom":  # what the series builder selects
            assert _problems(row, IndexRow, row["path"]) == []
        else:  # the columns such a row's reader did not write read back as NULL (a truncated file has them all)
            assert _problems({k: v for k, v in row.items() if v is not None}, IndexRow, row["path"]) == []


def test_mosaic_tile_rows_match_the_declaration(tmp_path: Path) -> None:
    """A Siemens mosaic's slices carry SliceRow rows with their MosaicTiles."""
    dcm = tmp_path / "mosaic.dcm"
    dcm.write_bytes(gzip.decompress((NIBABEL_DICOM / "siemens_dwi_1000.dcm.gz").read_bytes()))
    row = header_row(str(dcm))
    row["path"] = str(dcm)
    plan = plan_series([row], lambda p: "file-k")
    slices = [s for vol in plan.volumes for st in vol.slices for s in st]
    assert plan.kind == "image" and len(slices) > 1, plan.reason
    for s in slices:
        assert _problems(s.row, SliceRow, "slice") == []
        mosaic = s.row.get("mosaic")
        assert mosaic is not None and _problems(mosaic, MosaicTiles, "mosaic") == []
        # the tile is the whole image cut by the tiles per side (the file's own Rows/Columns)
        assert (s.row["rows"], s.row["cols"]) == (mosaic["rows"] // mosaic["side"], mosaic["cols"] // mosaic["side"])


def test_frame_info_keys_cover_the_reader() -> None:
    """Every key an enhanced frame item gets from the header reader is declared."""
    seen: set[str] = set()
    for path in _vendor_files():
        for frame in header_row(str(path)).get("frames") or []:
            seen |= set(frame)
    assert seen and seen <= _keys(FrameInfo)


def test_file_without_rows_is_a_named_error(tmp_path: Path) -> None:
    """mypy found ``int(row["rows"])`` on an Optional: a file with BitsAllocated but no (0028,0010)
    Rows crashed the series builder (an internal error); now it is the series' named error."""
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    del ds.Rows
    ds.save_as(tmp_path / "a.dcm")
    row = header_row(str(tmp_path / "a.dcm"))
    row["path"] = str(tmp_path / "a.dcm")
    assert row["rows"] is None and row["bits_alloc"] == 16  # independent of the reader: the file's own values
    # the series' other slice is whole (a series of files all without Rows is "non-image")
    second = header_row(str(PYDICOM_FILES / "CT_small.dcm"))
    second["path"] = str(tmp_path / "b.dcm")
    plan = plan_series([row, second], lambda p: "file-" + Path(p).stem)
    assert plan.kind == "error"
    assert "missing (0028,0010) Rows = None" in plan.reason
    assert str(tmp_path) not in plan.reason
