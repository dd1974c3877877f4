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
from collections.abc import Iterable

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas

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


def log_dataset_input(rows: list[dict[str, str]], catalog_sha256: str, labels: Iterable[str], context: str,
                      extra: dict[str, object] | None = None) -> None:
    """Log the dataset of the active run as an MLflow input (``context``: training / inference).

    Raises:
        mlflow.exceptions.MlflowException: the store refused the input.
    """
    labels = list(labels)
    mlflow.log_input(catalog_dataset(rows, catalog_sha256), context=context,
                     tags=input_tags(rows, catalog_sha256, labels, extra))
    log.info("logged dataset %s (%d series) as the run's %s input", dataset_name(catalog_sha256), len(rows), context)


def split_rows(split: dict[str, list[dict[str, str]]], modality: str) -> list[dict[str, str]]:
    """Rows for a training split (``split.json``: ``train`` and ``val`` lists of keys)."""
    return [{**item, "modality": modality, "role": role} for role in ("train", "val") for item in split.get(role, [])]
