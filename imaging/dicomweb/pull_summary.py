"""What a pull did: one row per study (a keyed name, status, counts) and the totals the summary prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StudyPull:
    """One study's outcome. ``key`` names it in logs and reports (a keyed hash where a secret is set)."""

    key: str
    status: str = "ok"  # ok | incomplete (fewer instances than the archive counts) | error
    reason: str = ""
    n_series: int = 0
    n_instances: int = 0
    n_fetched: int = 0
    n_present: int = 0  # already on disk before this run
    n_failed: int = 0
    path: Path | None = None  # the study's export folder when ok


@dataclass
class PullSummary:
    studies: list[StudyPull] = field(default_factory=list)

    @property
    def ok(self) -> list[StudyPull]:
        return [s for s in self.studies if s.status == "ok"]

    @property
    def failed(self) -> list[StudyPull]:
        return [s for s in self.studies if s.status != "ok"]

    def totals(self) -> dict[str, int]:
        return {"studies": len(self.studies), "studies_ok": len(self.ok), "studies_failed": len(self.failed),
                "series": sum(s.n_series for s in self.studies),
                "instances": sum(s.n_instances for s in self.studies),
                "fetched": sum(s.n_fetched for s in self.studies),
                "already_present": sum(s.n_present for s in self.studies),
                "instances_failed": sum(s.n_failed for s in self.studies)}
