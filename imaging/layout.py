"""Where a dataset's files are, and where its private side is: said once.

A dataset (``imaging ingest``'s output, or the one inference ingests an export into) is a
folder of de-identified files; everything that names patients or source paths (the
on-disk index, the link table, source maps, ``names.jsonl``, ``errors.jsonl``) lives in
its private side ``<dataset>.private`` beside it, never inside. Inference outputs have a
private side the same way (``<out>.private``). Ingest, inference, review, federation and
the MLflow adapter take these paths from here (before, the suffix was spelt in six places
and the catalog hash computed twice). A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

PRIVATE_SUFFIX = ".private"
CATALOG_NAME = "catalog.csv"


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


@dataclass(frozen=True)
class DatasetLayout:
    """The files of one dataset and of its private side.

    Attributes:
        root: the dataset folder (de-identified: keys only).
        private: its private side (owner-only files that name sources).
    """

    root: Path
    private: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str], private_dir: str | os.PathLike[str] | None = None) -> DatasetLayout:
        """The layout of the dataset at ``root`` (resolved); ``private_dir`` overrides ``<root>.private``."""
        root_path = Path(root).resolve()
        private = Path(private_dir).resolve() if private_dir else private_dir_of(root_path)
        return cls(root_path, private)

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_NAME

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def index(self) -> Path:
        return self.private / "index.sqlite"

    @property
    def sources(self) -> Path:
        return self.private / "sources"

    def source_map(self, series_key: str) -> Path:
        """The private map of a volume's source files (SEG/RTSTRUCT writing reads it)."""
        return self.sources / f"{series_key}.json"

    def catalog_sha256(self) -> str:
        """sha256 of ``catalog.csv``: the dataset's identity in training runs and model versions."""
        return file_sha256(self.catalog)
