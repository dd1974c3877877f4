"""`imaging infer model=models:/NAME@champion input=PATH output_dir=OUT [shard.index=..] [...]`.

Thin: compose the config, run :func:`imaging.pipelines.infer.run.run_inference`,
print a summary table. Exit 1 when ``fail_on_error=true`` and a series failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from imaging.resources import CONF_DIR
from imaging.settings import check_command


def main() -> None:
    """Entry point: ``model=URI`` is accepted as the documented spelling of ``model_uri=URI``.

    Hydra reads ``model=...`` as a choice in the ``imaging/conf/model/`` group (training's
    networks), so the URI is renamed before Hydra parses the command line.
    """
    sys.argv = [("model_uri=" + a[len("model="):]) if a.startswith("model=models:/") else a for a in sys.argv]
    _main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="infer")
def _main(cfg: DictConfig) -> None:
    import logging

    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.table import Table

    from imaging.errors import UsageError, require_input, require_writable_dir
    from imaging.keys import SecretError
    from imaging.pipelines.infer.report import read_report
    from imaging.pipelines.infer.run import run_inference

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied module at INFO
    console = Console()
    check_command("infer", cfg)  # a bad value: one line naming the key, exit 2, before any work
    if not str(cfg.input).startswith(("http://", "https://")):
        require_input("input", cfg.input)
    require_writable_dir("output_dir", cfg.output_dir)
    try:
        outcome = run_inference(cfg)
    except MlflowException as exc:
        from imaging.tracking.runs import tracking_uri_from_config

        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"model={cfg.model_uri}: {first} (store: {tracking_uri_from_config(cfg, probe=False)[0]}; "
                         "`imaging where` shows the store, `imaging model list` its models)") from None
    except (SecretError, FileNotFoundError, ValueError) as exc:
        # Set-up errors (no secret, no input, bad URI): one clear line, exit 2.
        raise UsageError(str(exc)) from None
    res = outcome.result
    report = res.merged_report
    if report is not None and report.is_file():
        rows = read_report(report)
        table = Table(title=f"imaging infer: {outcome.model.name} v{outcome.model.version}")
        vol_cols = [c for c in (rows[0] if rows else {}) if c.startswith("volume_ml_")]
        for col in ["series_key", "status", *vol_cols, "reason"]:
            table.add_column(col.replace("volume_ml_", "") + (" mL" if col in vol_cols else ""))
        for row in rows[:50]:
            table.add_row(*(str(row.get(c, "")) for c in ["series_key", "status", *vol_cols]), row["reason"][:60])
        console.print(table)
        if len(rows) > 50:
            console.print(f"... {len(rows) - 50} more rows in {report}")
    if cfg.get("prepare_only", False):
        console.print(f"prepared: {cfg.output_dir}/work/dataset (run the array with input= that folder)")
    elif not cfg.merge_only:
        console.print(
            f"shard {cfg.shard.index}/{cfg.shard.count}: {res.n_total} series, {res.n_ok} ok, {res.n_error} error, "
            f"{res.n_skipped_done} already done; {res.series_per_s:.2f} series/s"
        )
    console.print(f"report: {report} ({'complete' if res.merged_complete else 'other shards pending'}); "
                  f"SEG/NIfTI per series under {cfg.output_dir}/<series_key>/")
    studies = Path(str(cfg.output_dir)) / "studies.csv"  # with a selection rule (imaging.selection)
    if studies.is_file():
        import csv

        with studies.open(newline="", encoding="utf-8") as fh:
            status = [r["status"] for r in csv.DictReader(fh)]
        console.print(f"studies: {studies} ({status.count('selected')} with a selected series, "
                      f"{status.count('no_match')} without a match)")
    if outcome.transfers:
        pulls = [t for t in outcome.transfers if t.stage == "pull"]
        pushes = [t for t in outcome.transfers if t.stage == "push"]
        console.print(f"DICOMweb: {sum(t.status == 'ok' for t in pulls)}/{len(pulls)} studies pulled, "
                      f"{sum(t.status == 'ok' for t in pushes)} SEGs stored, "
                      f"{sum(t.status == 'present' for t in pushes)} already on the server")
        for t in outcome.transfers:
            if t.failed:
                console.print(f"  {t.stage} {t.key}: {t.reason}")
    if outcome.run_id:
        console.print(f"MLflow run {outcome.run_id} (experiment '{cfg.tracking.experiment_name}')")
    raise SystemExit(outcome.exit_code)


if __name__ == "__main__":
    main()
