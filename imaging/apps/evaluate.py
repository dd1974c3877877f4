"""`imaging evaluate model=models:/NAME@ALIAS experiment=demo_federated [split=val|all]`.

Thin: compose the config, call :func:`imaging.pipelines.evaluate.run`, print Dice per
site and pooled, the sites that did not answer, and the MLflow run.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from imaging.resources import CONF_DIR
from imaging.settings import check_command


def result_table(result: dict[str, Any], title: str) -> Table:
    """One row per site that answered and one for the pooled figures: cases and Dice per label."""
    labels = list(result["labels"])
    table = Table(title=title)
    for col in ("site", "cases", *(f"dice {n}" for n in labels), "dice mean", "hd95 mean mm"):
        table.add_column(col)
    rows = [*sorted(result["per_site"].items()), ("pooled", result["pooled"])]
    for site, m in rows:
        cells = [f"{m.get(f'dice_{n}', math.nan):.4f}" for n in labels]
        table.add_row(site, str(int(m.get("n_cases", 0))), *cells, f"{m.get('dice_mean', math.nan):.4f}",
                      f"{m.get('hd95_mean', math.nan):.1f}")
    return table


def main() -> None:
    """Entry point: ``model=models:/...`` is renamed to ``model_uri=`` before Hydra parses it
    (Hydra reads ``model=`` as a choice in training's ``conf/model/`` group), as ``imaging infer``."""
    sys.argv = [("model_uri=" + a[len("model="):]) if a.startswith("model=models:/") else a for a in sys.argv]
    _main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    from imaging.pipelines.evaluate import run

    check_command("evaluate", cfg)  # a bad value: one line naming the key, exit 2, before any work
    out = run(cfg)
    r = out.result
    console = Console()
    if out.jobs:  # launcher=slurm: submitted; the SuperLink job logs the result when the sites have answered
        for key, job_id in out.jobs.items():
            # Plain tab-separated lines, as `python -m imaging.launch.federate` prints: scripts parse them
            # (rich would wrap long paths and expand the tabs).
            sys.stdout.write(f"{key}\t{job_id}\t{out.scripts[key]}\n")
        console.print(f"run dir: {out.run_dir} (evaluation.json, then MLflow, when the SuperLink job ends)")
        return
    console.print(result_table(r, f"imaging evaluate: {out.model_name} v{out.version}, split={r['split']}"))
    if r["gaps"]:
        console.print(f"no answer from site(s) {', '.join(r['gaps'])}: pooled over {', '.join(r['answered'])}")
    if r.get("no_cases"):
        console.print(f"no case to evaluate at site(s) {', '.join(r['no_cases'])} (the model's selection rule "
                      "or the split left none)")
    if out.run_id:
        console.print(f"MLflow run {out.run_id} (experiment '{cfg.evaluation.experiment_name}'); "
                      f"tags eval.* on {out.model_name} v{out.version}")
    console.print(f"run dir: {out.run_dir}")


if __name__ == "__main__":
    main()
