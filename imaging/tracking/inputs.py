"""The dataset as an MLflow input (the run page's "Datasets" column and panel).

One :class:`mlflow.data.pandas_dataset.PandasDataset` per run: one row per series
the run used (keyed hash ``series_key``, ``subject_key``, modality, and the role:
train / val for training, the shard's series for inference). Its name is
``catalog-<first 12 hex of the catalog sha256>`` and its digest the catalog hash,
so the same catalog shows under the same name on training and inference runs and
a reviewer can follow model version -> training run -> dataset -> series keys.
Counts, modalities and label names are input tags. Keys and counts only: never
a path or a patient identifier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 UI: which view an experiment opens in
EXPERIMENT_KIND = "custom_model_development"   # the model-training view (not GenAI)
COLUMNS = ["series_key", "subject_key", "modality", "role"]


def dataset_name(catalog_sha256: str) -> str:
    return f"catalog-{catalog_sha256[:12]}" if catalog_sha256 else "catalog-unknown"


def catalog_dataset(rows: Iterable[dict[str, str]], catalog_sha256: str) -> PandasDataset:
    """The MLflow dataset for ``rows`` (dicts with the keys of :data:`COLUMNS`)."""
    frame = pd.DataFrame([{c: str(r.get(c, "") or "") for c in COLUMNS} for r in rows], columns=COLUMNS)
    # The digest column is 36 characters in MLflow's stores: the hash's first 32 hex digits.
    # A code source: the catalog is not a path a reviewer (or the server) could open.
    source = CodeDatasetSource({"imaging.catalog_sha256": catalog_sha256, "imaging.made_by": "imaging ingest"})
    return from_pandas(frame, source=source,
                                   name=dataset_name(catalog_sha256), digest=(catalog_sha256 or "unknown")[:32])


def input_tags(rows: list[dict[str, str]], catalog_sha256: str, labels: Iterable[str],
               extra: dict[str, object] | None = None) -> dict[str, str]:
    modalities = sorted({str(r.get("modality") or "") for r in rows} - {""})
    tags = {"catalog_sha256": catalog_sha256, "n_series": str(len(rows)),
            "n_subjects": str(len({r.get("subject_key") for r in rows})), "modalities": ",".join(modalities),
            "labels": ",".join(str(n) for n in labels)}
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


_INPUT_ATTEMPTS = 4


def _is_duplicate_key(exc: Exception) -> bool:
    text = str(exc)
    return any(m in text for m in ("UniqueViolation", "duplicate key", "UNIQUE constraint failed"))


def log_dataset_input(rows: list[dict[str, str]], catalog_sha256: str, labels: Iterable[str], context: str,
                      extra: dict[str, object] | None = None) -> None:
    """Log the dataset of the active run as an MLflow input (``context``: training / inference).

    Raises:
        mlflow.exceptions.MlflowException: the store refused the input.
    """
    labels = list(labels)
    dataset, tags = catalog_dataset(rows, catalog_sha256), input_tags(rows, catalog_sha256, labels, extra)
    for attempt in range(_INPUT_ATTEMPTS):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            break
        except MlflowException as exc:
            # The store inserts a dataset it did not find: array tasks logging the same dataset at
            # the same moment race on its primary key (PostgreSQL's UniqueViolation, SQLite's
            # UNIQUE constraint). The loser's retry finds the winner's row and only links it.
            if attempt + 1 == _INPUT_ATTEMPTS or not _is_duplicate_key(exc):
                raise
            log.info("dataset %s was being logged by another job at once: retrying", dataset_name(catalog_sha256))
            time.sleep(0.5 * (attempt + 1))
    log.info("logged dataset %s (%d series) as the run's %s input", dataset_name(catalog_sha256), len(rows), context)


def split_rows(split: dict[str, list[dict[str, str]]], modality: str) -> list[dict[str, str]]:
    """Rows for a training split (``split.json``: ``train`` and ``val`` lists of keys)."""
    return [{**item, "modality": modality, "role": role} for role in ("train", "val") for item in split.get(role, [])]
