"""What a shard runs on: the dataset behind ``input=`` (ingesting a PACS export) and its share of the series.

Sharding: the catalog's series keys are sorted and dealt round robin
(``keys[index::count]``): deterministic, balanced, each series in one shard.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import Any

from imaging.keys import Pseudonymizer
from imaging.layout import private_dir_of

log = logging.getLogger(__name__)


def shard_keys(keys: list[str], index: int, count: int) -> list[str]:
    """This shard's series: sorted keys dealt round robin. Every key lands in exactly one shard."""
    return sorted(set(keys))[index::count]


def resolve_input(input_path: str | Path, output_dir: Path, pseudonymizer: Pseudonymizer | None,
                  private_dir: str | Path | None = None, **ingest_kwargs: Any) -> tuple[Path, Path]:
    """Find the dataset to run on: an ingested dataset (folder or its catalog.csv) or a PACS export.

    A PACS export is ingested (the same function as ``imaging ingest``) into
    ``<output_dir>/work/dataset`` with its private side (source paths, pseudonym links)
    in ``<output_dir>.private`` beside, never inside, the predictions;
    shards of an array job take a file lock so one ingests while the others wait,
    then find the (idempotent) ingest already done.

    Returns:
        (dataset_dir, private_dir)

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: a PACS export but no pseudonymizer (ingest needs the project secret).
    """
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input '{path}' does not exist")
    if path.is_file() and path.suffix == ".csv":
        path = path.parent
    if (path / "catalog.csv").is_file():
        return path, private_dir_of(path, private_dir)
    if pseudonymizer is None:
        raise ValueError(f"input '{path}' is a PACS export: ingesting it needs the project secret")
    from imaging.pipelines.ingest import ingest  # only a PACS export pays for it

    work = output_dir / "work"
    dataset = work / "dataset"
    private = private_dir_of(output_dir, private_dir)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".ingest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log.info("ingesting the PACS export into %s", dataset)
        ingest(path, dataset, pseudonymizer, private_dir=private, **ingest_kwargs)
    return dataset, private

