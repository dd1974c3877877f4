"""Where a dataset's private side is, and the file hash its catalog is known by: said once.

A dataset (``imaging ingest``'s output, or the one inference ingests an export into) is a
folder of de-identified files; everything that names patients or source paths (the
on-disk index, the link table, source maps, ``names.jsonl``, ``errors.jsonl``) lives in
its private side ``<dataset>.private`` beside it, never inside. Inference outputs have a
private side the same way (``<out>.private``). Ingest, inference, review, federation and
the MLflow adapter take it from here (before, the suffix was spelt in six places and the
catalog hash computed twice). A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PRIVATE_SUFFIX = ".private"


def private_dir_of(folder: str | os.PathLike[str], private_dir: str | os.PathLike[str] | None = None) -> Path:
    """``private_dir`` when given, else ``<folder>.private`` beside ``folder``."""
    if private_dir is not None and str(private_dir) != "":
        return Path(private_dir)
    path = Path(folder)
    return path.with_name(path.name + PRIVATE_SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
