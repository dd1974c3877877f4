"""The audit's struct reader of NIfTI text agrees with nibabel on the same files.

nibabel is the oracle: its header fields and extensions, on nibabel's own shipped
test files (NIfTI-1/2, CIFTI with XML extensions, a .hdr pair, Analyze) and on files
written here in both byte orders with extensions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from imaging.audit import scan_paths
from imaging.audit.needles import Needles
from imaging.audit.nifti_scan import read_nifti_file

DATA = Path(nib.__file__).parent / "tests" / "data"
SHIPPED = ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii",
           "nifti1.hdr", "nifti2.hdr", "row_major.dconn.nii", "standard.nii.gz"]


def _written(tmp: Path) -> list[Path]:
    out = []
    for klass, suffix in ((nib.Nifti1Image, ".nii"), (nib.Nifti2Image, ".nii.gz"), (nib.Nifti1Pair, ".hdr")):
        for order in "<>":
            header = klass.header_class(endianness=order)
            img = klass(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4), header=header)
            img.header["descrip"] = b"volume of ZZPHI^Descrip"
            img.header["aux_file"] = b"aux ZZPHI"
            img.header.set_intent("none", name="ZZPHI intent")
            img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"comment ZZPHI^Ext"))
            img.header.extensions.append(nib.nifti1.Nifti1Extension(44, b'{"who": "ZZPHI"}'))
            path = tmp / f"{klass.__name__}_{'le' if order == '<' else 'be'}{suffix}"
            nib.save(img, str(path))
            out.append(path)
    return out


def _nibabel(path: Path) -> tuple[dict[str, bytes], list[tuple[int, bytes]]]:
    img = nib.load(str(path))
    header: Any = getattr(img, "nifti_header", img.header)  # CIFTI keeps its NIfTI-2 header apart
    fields = {}
    for key in ("data_type", "db_name", "descrip", "aux_file", "intent_name"):
        if key in header:
            fields[key] = header[key].tobytes().rstrip(b"\x00")
    extensions = [(e.get_code(), bytes(e.get_content()).rstrip(b"\x00"))
                  for e in getattr(header, "extensions", []) or []
                  if isinstance(e.get_content(), bytes)]
    return fields, extensions


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_match_nibabel(name: str) -> None:
    fields, extensions = _nibabel(DATA / name)
    ours = read_nifti_file(DATA / name)
    assert ours.fields == fields
    assert [e for e in ours.extensions if e in extensions] == extensions


def test_written_files_both_byte_orders_match_nibabel(tmp_path: Path) -> None:
    for path in _written(tmp_path):
        fields, extensions = _nibabel(path)
        ours = read_nifti_file(path)
        assert ours.fields == fields, path.name
        assert ours.extensions == extensions, path.name
        assert len(ours.extensions) == 2 and b"ZZPHI" in ours.fields["descrip"]


def test_every_text_field_and_extension_is_audited(tmp_path: Path) -> None:
    needles = Needles().add(["ZZPHI"], "canary")
    for path in _written(tmp_path):
        fields = {h.field for h in scan_paths([path], needles)}
        assert {"header descrip", "header aux_file", "header intent_name"} <= fields, path.name
        assert {f.split(" @")[0] for f in fields if f.startswith("extension")} == {
            "extension 0 (code 6)", "extension 1 (code 44)"}, path.name


def test_not_nifti_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.nii"
    bad.write_bytes(b"\x00" * 400)
    with pytest.raises(ValueError, match="sizeof_hdr"):
        read_nifti_file(bad)
    bad.write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        read_nifti_file(bad)
