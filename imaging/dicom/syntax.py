"""Transfer syntaxes: which are native (pixels readable by offset), their names, and the
syntax of a bare file (no File Meta), without importing pydicom where a table will do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imaging.dicom.fastheader import EXPLICIT_LE, IMPLICIT_LE

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

def bare_transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax of a file without File Meta, from the encoding pydicom detected.

    A "bare" dataset (no preamble, no group 0002) carries no TransferSyntaxUID;
    pydicom guesses implicit/explicit VR and endianness from the first elements.
    """
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return IMPLICIT_LE
    return EXPLICIT_LE if little else EXPLICIT_BE


def read_dataset(path: str, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` that also reads bare files and sets their (inferred) transfer syntax."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.dcmread(path, force=True, **kwargs)
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        meta = meta if meta is not None else FileMetaDataset()
        meta.TransferSyntaxUID = bare_transfer_syntax(ds)
        ds.file_meta = meta
    return ds


def is_native(ts: str | None) -> bool:
    """True for uncompressed little-endian transfer syntaxes (pixels readable by offset)."""
    return ts in (IMPLICIT_LE, EXPLICIT_LE)


# The common syntaxes by name without importing pydicom (0.5-0.8 s of a plain ingest's start-up).
_TS_NAMES = {IMPLICIT_LE: "Implicit VR Little Endian", EXPLICIT_LE: "Explicit VR Little Endian",
             "1.2.840.10008.1.2.2": "Explicit VR Big Endian", "1.2.840.10008.1.2.5": "RLE Lossless",
             "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
             "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
             "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
             "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression"}


def ts_name(ts: str | None) -> str:
    if not ts:
        return "missing"
    if ts in _TS_NAMES:
        return _TS_NAMES[ts]
    from pydicom.uid import UID

    return UID(ts).name
