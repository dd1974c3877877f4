"""DICOMDIR for files already written in our own layout.

pydicom's :meth:`FileSet.write` would move every instance into its own
``PTxxxxxx/STxxxxxx`` structure; we only want the index. So the directory records
are built with pydicom's record creators and written with its encoder, with the
ReferencedFileID of each leaf set to the file's existing path (pydicom 3.0.x).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.fileset import FileInstance, FileSet, RecordNode
from pydicom.uid import UID

from imaging.fsutil import atomic_path

log = logging.getLogger(__name__)


def write_dicomdir(root: Path, rel_paths: list[str], file_set_uid: str,
                   file_set_id: str = "SYNTHEXPORT",
                   on_header: Callable[[Dataset], None] | None = None) -> Path:
    """Write ``root/DICOMDIR`` indexing ``rel_paths`` (relative, '/'-separated).

    Args:
        root: export root (File-set root).
        rel_paths: files to index, '/'-separated, relative to ``root``.
        file_set_uid: the File-set UID (MediaStorageSOPInstanceUID of the DICOMDIR).
        file_set_id: the File-set ID.
        on_header: called with each file's header (one read serves other bookkeeping).

    Raises:
        ValueError: a path component is not a valid File ID component (<= 8 chars,
            uppercase letters, digits, underscore), naming the path.
    """
    fs = FileSet()
    fs.ID = file_set_id
    fs.UID = UID(file_set_uid)  # deterministic (pydicom would draw a random one)
    # (patient, study, series) -> node; FileSet.add() would search siblings linearly.
    nodes: dict[tuple[str, ...], RecordNode] = {}
    for rel in rel_paths:
        parts = rel.split("/")
        bad = [p for p in parts if len(p) > 8 or not all(c.isupper() or c.isdigit() or c == "_" for c in p)]
        if bad or len(parts) > 8:
            raise ValueError(f"'{rel}': not a DICOM File ID (components {bad}, depth {len(parts)})")
        ds = dcmread(root / rel, stop_before_pixels=True)
        if on_header is not None:
            on_header(ds)
        *upper, leaf_record = list(fs._recordify(ds))  # noqa: SLF001 - pydicom's own record creators
        parent: RecordNode = fs._tree  # noqa: SLF001
        keys = (str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        for depth, record in enumerate(upper):
            key = keys[: depth + 1]
            if key not in nodes:
                nodes[key] = RecordNode(record)
                nodes[key].parent = parent
            parent = nodes[key]
        leaf_record.ReferencedFileID = parts
        leaf = RecordNode(leaf_record)
        leaf.instance = FileInstance(leaf)
        leaf._parent = parent  # noqa: SLF001 - a new leaf: skip the O(n) sibling membership test
        parent.children.append(leaf)
    out = root / "DICOMDIR"
    with atomic_path(out, suffix="") as tmp, open(tmp, "wb") as fh:
        fs._write_dicomdir(DicomFileLike(fh))  # noqa: SLF001
    log.info("DICOMDIR indexes %d files", len(rel_paths))
    return out
