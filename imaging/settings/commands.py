"""Which settings each command composes, and the one check every app calls at compose time.

A command's config is a list of (dotted prefix, dataclass) pairs: its groups (``trainer``,
``inference``, ``launcher``...) and, under the empty prefix, its own top-level keys (and
the ``ingest_options`` group, which ``ingest`` and ``infer`` mount at the top level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from imaging.settings.check import check_node, setting
from imaging.settings.deid import DeidCommand, DeidOptionsSettings
from imaging.settings.dicomweb import DicomwebSettings, PullCommand
from imaging.settings.federation import FederationSettings
from imaging.settings.inference import InferCommand, InferenceSettings
from imaging.settings.ingest import IngestCommand, IngestOptions
from imaging.settings.launcher import LauncherSettings
from imaging.settings.tracking import TrackingSettings
from imaging.settings.train import DataSchema, TrainerSchema

# Copied from imaging.synth.export (settings import nothing above them; a test compares).
SYNTH_SIZES = ("small", "full")
SYNTH_LAYOUTS = ("nested", "flat")
SYNTH_SCANNERS = ("default", "site0", "site1", "site2")


@dataclass
class SynthCommand:
    """``imaging synth``'s keys."""

    output_dir: str = setting("")
    subjects: int = setting(2, min=0)
    seed: int = setting(0, min=0)
    cases: str | list[str] = setting("all")
    size: str = setting("small", choices=SYNTH_SIZES)
    layout: str = setting("nested", choices=SYNTH_LAYOUTS)
    dicomdir: bool = setting(True)
    scanner: str = setting("default", choices=SYNTH_SCANNERS)
    overwrite: bool = setting(False)


@dataclass
class EvaluationSettings:
    model_uri: str = setting("")
    split: str = setting("all", choices=("all", "val"))
    experiment_name: str = setting("evaluation")


@dataclass
class EvaluateCommand:
    """``imaging evaluate``'s own keys (``model_uri`` is required; the pipeline resolves it)."""

    model_uri: str = setting("")
    split: str = setting("all", choices=("all", "val"))
    run_dir: str | None = setting(None)
    dry_run: bool = setting(False)
    finish_only: bool = setting(False)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)


_TRAINING: list[tuple[str, type]] = [("trainer", TrainerSchema), ("data", DataSchema),
                                     ("tracking", TrackingSettings), ("launcher", LauncherSettings)]
COMMANDS: dict[str, list[tuple[str, type]]] = {
    "train": _TRAINING,  # run_dir: a path the pipeline derives (${config_hash:}), not a setting
    "federate": [*_TRAINING, ("federation", FederationSettings)],
    "evaluate": [*_TRAINING, ("federation", FederationSettings), ("inference", InferenceSettings),
                 ("", EvaluateCommand)],
    "infer": [("", InferCommand), ("", IngestOptions), ("inference", InferenceSettings),
              ("deid_options", DeidOptionsSettings), ("dicomweb", DicomwebSettings),
              ("tracking", TrackingSettings)],
    "ingest": [("", IngestCommand), ("", IngestOptions), ("deid_options", DeidOptionsSettings)],
    "deid": [("", DeidCommand), ("deid_options", DeidOptionsSettings)],
    "pull": [("", PullCommand), ("dicomweb", DicomwebSettings)],
    "synth": [("", SynthCommand)],
    "submit": [("launcher", LauncherSettings)],
}


def check_command(command: str, cfg: DictConfig | Any) -> None:
    """Check every group and top-level key of ``command``'s composed config, before any work.

    Raises:
        SettingsError: (a UsageError: exit 2) the first key of the wrong type or out of range.
        KeyError: ``command`` has no settings declared (a bug in the caller).
    """
    for prefix, schema in COMMANDS[command]:
        node = cfg if not prefix else cfg.get(prefix) if isinstance(cfg, DictConfig) else None
        if node is not None:
            check_node(node, schema, prefix)
