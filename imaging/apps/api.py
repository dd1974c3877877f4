"""The commands as a Python API, for notebooks and scripts: the same configs, the same pipelines.

Each function composes the command's shipped config (and a site's, from
``IMAGING_CONFIG_DIR``) with the given overrides, exactly as ``imaging <command>`` does,
and runs the same pipeline, returning its result object instead of printing a table::

    from imaging.apps import api

    api.ingest("export/", "dataset/", demo_key=True)
    result = api.train("demo_seg", {"trainer.max_epochs": 2})
    outcome = api.infer("models:/demo_seg@champion", "new_export/", "predictions/", demo_key=True)

Overrides are Hydra's, as a mapping (``{"trainer.max_epochs": 2}``) or a list
(``["trainer.max_epochs=2", "model=segresnet"]``). A bad key raises Hydra's own exception, a
value of the wrong type or out of range :class:`imaging.settings.SettingsError` naming the key
(the command line turns either into one line and exit 2). Like nnU-Net's
predictor class beside its command line, this is a thin layer: the pipelines hold the work.
It lives with the commands (``imaging.apps``): only they call the pipelines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    from imaging.pipelines.federate import FederateResult
    from imaging.pipelines.infer.run import InferenceOutcome
    from imaging.pipelines.ingest import IngestSummary
    from imaging.pipelines.train.run import TrainResult

Overrides = Mapping[str, Any] | Sequence[str] | None


def _override_list(overrides: Overrides, **named: Any) -> list[str]:
    out = [f"{k}={_hydra_value(v)}" for k, v in named.items() if v is not None]
    if isinstance(overrides, Mapping):
        out += [f"{k}={_hydra_value(v)}" for k, v in overrides.items()]
    elif overrides:
        out += [str(o) for o in overrides]
    return out


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and any(c in value for c in " ,=[]{}'\"()"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's quoted string
    return str(value)


def compose(command: str, overrides: Overrides = None) -> DictConfig:
    """The resolved config ``imaging <command>`` would run with these overrides."""
    from imaging.launch.submit import compose as compose_resolved
    from imaging.settings import COMMANDS, check_command

    cfg = compose_resolved(command, _override_list(overrides))
    if command in COMMANDS:  # every group checked, as the command does before any work
        check_command(command, cfg)
    return cfg


def ingest(input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], overrides: Overrides = None, *,
           secret_file: str | os.PathLike[str] | None = None, demo_key: bool = False) -> IngestSummary:
    """``imaging ingest``: a PACS export -> a de-identified dataset (returns its summary)."""
    from imaging.keys import Pseudonymizer
    from imaging.pipelines.ingest import ingest as run
    from imaging.pipelines.ingest import ingest_options

    cfg = compose("ingest", _override_list(overrides, input_dir=input_dir, output_dir=output_dir,
                                           secret_file=secret_file, demo_key=demo_key or None))
    ps = Pseudonymizer.from_config(cfg.secret_file, cfg.demo_key)
    return run(cfg.input_dir, cfg.output_dir, ps, private_dir=cfg.private_dir, workers=cfg.workers,
               labels_dir=cfg.labels_dir, progress=cfg.progress, **ingest_options(cfg))


def train(experiment: str | None = None, overrides: Overrides = None) -> TrainResult:
    """``imaging train``: one training run (MLflow run, registered model) of ``experiment``."""
    from imaging.pipelines.train.run import run

    return run(compose("train", _override_list(overrides, experiment=experiment)))


def infer(model: str, input: str | os.PathLike[str], output_dir: str | os.PathLike[str],  # noqa: A002
          overrides: Overrides = None, *, secret_file: str | os.PathLike[str] | None = None,
          demo_key: bool = False) -> InferenceOutcome:
    """``imaging infer``: a registered model (``models:/NAME@ALIAS``) over an export, a dataset or an archive."""
    from imaging.pipelines.infer.run import run_inference

    return run_inference(compose("infer", _override_list(
        overrides, model_uri=model, input=input, output_dir=output_dir, secret_file=secret_file,
        demo_key=demo_key or None)))


def federate(experiment: str | None = None, overrides: Overrides = None) -> FederateResult:
    """``imaging federate``: federated training across the experiment's sites (Flower processes)."""
    from imaging.pipelines.federate import run

    return run(compose("federate", _override_list(overrides, experiment=experiment)))
