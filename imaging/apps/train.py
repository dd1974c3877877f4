"""`imaging train experiment=demo_seg [model=segresnet] [trainer.max_epochs=...]`.

Thin: compose the config, call :func:`imaging.pipelines.train.run.run`, print a summary.
Exit codes: 0 done, 2 config error (before any work), 3 (``EXIT_PREEMPTED``)
stopped for a signal after checkpointing: the Slurm script requeues on it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from imaging.jobenv import dist_env
from imaging.launch.preempt import EXIT_PREEMPTED
from imaging.resources import CONF_DIR
from imaging.settings import check_command

if TYPE_CHECKING:
    from imaging.pipelines.train.run import TrainResult

log = logging.getLogger(__name__)


def summary_table(r: TrainResult) -> Table:
    """Dice per label, run, registered model and checkpoint paths."""
    table = Table(title="imaging train: done" if not r.preempted else "imaging train: PREEMPTED (will resume)")
    table.add_column("item")
    table.add_column("value")
    for key, value in sorted(r.metrics.items()):
        if key.startswith(("dice_", "hd95_", "auc", "accuracy")):
            table.add_row(f"val {key}", f"{value:.4f}")
    table.add_row("best epoch / metric", f"{r.best_epoch} / {r.best_metric:.4f}")
    table.add_row("epochs done", str(r.epochs_done))
    table.add_row("MLflow run id", str(r.run_id))
    reg = r.registered
    if reg:
        alias = f"@{reg['alias']}" if reg.get("alias") else f"(@candidate stays on v{reg.get('alias_version')})"
        table.add_row("registered model", f"{reg['name']} v{reg['version']} {alias}  ({reg['uri']})")
    elif r.already_done:
        table.add_row("registered model", "nothing new: this configuration had already finished "
                      f"({r.previously_registered.get('uri', 'not registered')})")
    for kind, path in r.checkpoints.items():
        table.add_row(f"checkpoint {kind}", path)
    if r.tracking.get("ui_command"):
        table.add_row("MLflow UI", r.tracking["ui_command"])
    return table


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    from imaging.pipelines.train.run import run

    # A ConfigError or SettingsError (UsageErrors) reaches imaging.cli: one line, exit 2.
    check_command("train", cfg)
    result = run(cfg)
    if result.run_dir is not None and (result.metrics or result.preempted or result.already_done) \
            and dist_env().is_main:
        Console().print(summary_table(result))
    if result.preempted:
        raise SystemExit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
