"""`make demo` / `python -m imaging.demo`: the whole pipeline on synthetic data.

synth -> ingest -> train ``demo_seg`` -> register (alias ``candidate``) -> promote to
``champion`` -> synth a held-out export -> infer with ``models:/demo_seg@champion``.
Each step runs the CLI command a user would type (printed before it runs), so the
demo doubles as a tutorial; a failing step stops the demo with its exit code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from imaging.project import write_marker
from imaging.resources import CONF_DIR
from imaging.tracking.store import embedded_uri

console = Console()


@dataclass
class Step:
    title: str
    args: list[str]
    ok_codes: tuple[int, ...] = (0,)


def demo_steps(cfg: DictConfig) -> list[Step]:
    d = Path(cfg.demo_dir)
    model_uri = f"models:/{cfg.model_name}@champion"
    return [
        Step("Synthesise a PACS export (phantoms, tricky cases, PHI canaries)",
             ["synth", f"output_dir={d / 'export'}", f"subjects={cfg.subjects}", f"seed={cfg.seed}"]),
        # The export holds deliberately broken files (truncated, unknown transfer
        # syntax...): ingest records them in the catalog and goes on.
        Step("Ingest: index, group, assemble, de-identify -> NIfTI + catalog",
             ["ingest", f"input_dir={d / 'export'}", f"output_dir={d / 'dataset'}",
              "demo_key=true", "fail_on_error=false"]),
        Step("Train demo_seg (CPU), track in MLflow, register as @candidate",
             ["train", f"experiment={cfg.experiment}", f"data.dataset_dir={d / 'dataset'}"]),
        Step("Promote the new version to @champion",
             ["model", "promote", cfg.model_name, "candidate", "--alias", "champion"]),
        Step("Synthesise a held-out export the model never saw",
             ["synth", f"output_dir={d / 'heldout'}", f"subjects={cfg.heldout_subjects}",
              f"seed={cfg.seed + 1000}", "cases=none"]),
        Step(f"Batch inference with {model_uri} (its own series rule) -> NIfTI, SEG, RTSTRUCT, reports",
             ["infer", f"model={model_uri}", f"input={d / 'heldout'}",
              f"output_dir={d / 'predictions'}", "demo_key=true", "output.rtstruct=true", "output.preview=true"]),
    ]


def run_step(step: Step, index: int, total: int) -> float:
    cmd = [sys.executable, "-m", "imaging", *step.args]
    console.rule(f"[bold]{index}/{total} {step.title}")
    console.print("[dim]$ imaging " + " ".join(step.args))
    start = time.perf_counter()
    code = subprocess.call(cmd)
    elapsed = time.perf_counter() - start
    if code not in step.ok_codes:
        console.print(f"[red]step {index} failed with exit code {code}: imaging {' '.join(step.args)}")
        raise SystemExit(code)
    return elapsed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="demo")
def main(cfg: DictConfig) -> None:
    demo_dir = Path(cfg.demo_dir)
    # Make the root a project so `imaging infer models:/demo_seg@champion` run from any
    # subfolder finds the store this demo registers into (imaging/project.py).
    write_marker(cfg.paths.root_dir)
    if cfg.fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    steps = demo_steps(cfg)
    timings = [(s.title, run_step(s, i, len(steps))) for i, s in enumerate(steps, 1)]
    table = Table(title="make demo: done")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for title, seconds in timings:
        table.add_row(title, f"{seconds:.0f}")
    table.add_row("[bold]total", f"[bold]{sum(t for _, t in timings):.0f}")
    console.print(table)
    console.print(f"Dataset:      {demo_dir / 'dataset' / 'catalog.csv'}")
    console.print(f"Predictions:  {demo_dir / 'predictions' / 'report.csv'} (DICOM SEG: */seg.dcm)")
    # The store train/registry/infer used: the embedded default of imaging/conf/paths (no guess from demo_dir).
    console.print(f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri {embedded_uri(cfg.paths.mlflow_db)}")


if __name__ == "__main__":
    main()
