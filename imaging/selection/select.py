"""Apply a rule to a catalog: per study, which series run and why the others do not.

Order of decisions for every series of a study:

1. not an image volume at ingest (localizer, secondary capture, SR, SEG...) or
   failed at ingest: rejected by ``ingest`` with the catalog's reason;
2. a named condition of the rule fails: rejected by that name (all failing names listed);
3. a QC check fails (tilt, uneven spacing, too few slices, lossy): rejected by ``qc.<check>``;
4. the remaining candidates are ranked by the tie-break; ``per_study=one`` keeps
   the first and rejects the others by ``tie_break``, ``all`` keeps them all.

A study without a candidate is a ``no_match`` row of the study report, not an error.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from imaging.dicom.catalog import CatalogRow
from imaging.selection.features import SeriesFeatures, series_features
from imaging.selection.qc import qc_failures
from imaging.selection.rules import Rule

log = logging.getLogger(__name__)


@dataclass
class Rejection:
    """Why one series was not selected: the rule/check names and a short reason (no PHI)."""

    series_key: str
    by: list[str]
    reason: str

    def text(self) -> str:
        return f"{self.series_key}: {','.join(self.by)} ({self.reason})"


@dataclass
class StudySelection:
    """One study's outcome (one row of the study report)."""

    study_key: str
    subject_key: str
    rule: str
    selected: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "selected" if self.selected else "no_match"


@dataclass
class Selection:
    """The series to run on and every study's outcome."""

    rule: Rule
    rows: list[CatalogRow]  # the selected catalog rows (what the batch runs on)
    studies: list[StudySelection]
    features: dict[str, SeriesFeatures] = field(default_factory=dict, repr=False)


def _decide(rule: Rule, feats: list[SeriesFeatures], study: StudySelection) -> None:
    candidates: list[SeriesFeatures] = []
    for f in feats:
        if f.status != "ok":
            study.rejected.append(Rejection(f.series_key, ["ingest"], f"{f.status}: {f.ingest_reason or '-'}"))
            continue
        failed = rule.rejections(f)
        if failed:
            study.rejected.append(Rejection(f.series_key, [n for n, _ in failed], "; ".join(w for _, w in failed)))
            continue
        qc = qc_failures(f, rule.qc)
        if qc:
            study.rejected.append(Rejection(f.series_key, [n for n, _ in qc], "; ".join(w for _, w in qc)))
            continue
        candidates.append(f)
    candidates.sort(key=rule.rank_key)
    keep = candidates if rule.per_study == "all" else candidates[:1]
    study.selected = [f.series_key for f in keep]
    for f in candidates[len(keep):]:
        study.rejected.append(Rejection(f.series_key, ["tie_break"],
                                        f"{keep[0].series_key} ranks first by {'/'.join(rule.tie_break)}"))


def select_series(catalog: list[CatalogRow], rule: Rule, dataset: Path, private: Path | None) -> Selection:
    """Run ``rule`` over every row of ``catalog`` (all statuses: skipped rows are reported too).

    ``private`` is the hospital-side folder (``sources/`` there): without it, conditions
    on the description, contrast and acquisition time see "unknown" and fail.
    """
    by_study: dict[tuple[str, str], list[SeriesFeatures]] = defaultdict(list)
    features: dict[str, SeriesFeatures] = {}
    for row in catalog:
        f = series_features(row, dataset, private)
        features[row.series_key] = f
        by_study[(row.study_key, row.subject_key)].append(f)
    studies = []
    for (study_key, subject_key), feats in sorted(by_study.items()):
        study = StudySelection(study_key, subject_key, rule.name)
        _decide(rule, sorted(feats, key=lambda x: x.series_key), study)
        studies.append(study)
    chosen = {k for s in studies for k in s.selected}
    rows = [r for r in catalog if r.series_key in chosen]
    log.info("selection '%s': %d series in %d studies (%d without a match)", rule.name, len(rows), len(studies),
             sum(s.status == "no_match" for s in studies))
    return Selection(rule, rows, studies, features)
