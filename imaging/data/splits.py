"""Train/validation splits by subject: never one subject on both sides.

Subjects (``subject_key``) are sorted, shuffled with a fixed seed and dealt into
``folds`` groups; fold ``k`` is the validation set. The same seed and catalog
always give the same split, on every rank and after every requeue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass
class Split:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    fold: int
    folds: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        """The split as saved to MLflow (``split.json``): keys only, no paths."""

        def keys(items: list[dict[str, Any]]) -> list[dict[str, str]]:
            return [{"series_key": i["series_key"], "subject_key": i["subject_key"]} for i in items]

        return {
            "fold": self.fold, "folds": self.folds, "seed": self.seed,
            "train_subjects": sorted({i["subject_key"] for i in self.train}),
            "val_subjects": sorted({i["subject_key"] for i in self.val}),
            "train": keys(self.train), "val": keys(self.val),
        }


def split_by_subject(items: list[dict[str, Any]], folds: int, fold: int, seed: int) -> Split:
    """Deal subjects into ``folds`` groups; group ``fold`` validates.

    Raises:
        ValueError: ``folds < 2``, ``fold`` out of range, or fewer subjects than folds.
    """
    if folds < 2:
        raise ValueError(f"data.split.folds must be >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be in [0, {folds}), got {fold}")
    subjects = sorted({i["subject_key"] for i in items})
    if len(subjects) < folds:
        raise ValueError(f"data.split.folds={folds} but the dataset has only {len(subjects)} subject(s)")
    random.Random(seed).shuffle(subjects)
    val_subjects = set(subjects[fold::folds])
    ordered = sorted(items, key=lambda i: (i["subject_key"], i["series_key"]))
    return Split(
        train=[i for i in ordered if i["subject_key"] not in val_subjects],
        val=[i for i in ordered if i["subject_key"] in val_subjects],
        fold=fold, folds=folds, seed=seed,
    )
