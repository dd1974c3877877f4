"""`imaging deid input_dir=... output_dir=...`: a de-identified DICOM copy of a PACS export."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from imaging.deid.apply import DeidOptions
from imaging.deid.export import DeidConfigError, DeidSummary, deidentify_export
from imaging.errors import require_dir, require_writable_dir
from imaging.keys import Pseudonymizer, SecretError
from imaging.resources import CONF_DIR
from imaging.settings import check_command

EXIT_CONFIG = 2


def print_summary(summary: DeidSummary, console: Console | None = None) -> None:
    """Counts and withheld reasons (no values, no input paths)."""
    console = console or Console()
    table = Table(title="imaging deid")
    table.add_column("files")
    table.add_column("n", justify="right")
    for name, n in (
        ("seen", summary.files_seen),
        ("written (de-identified)", summary.written),
        ("withheld", summary.withheld),
        ("skipped: not DICOM", summary.skipped_non_dicom),
        ("skipped: DICOMDIR", summary.skipped_dicomdir),
    ):
        table.add_row(name, str(n))
    console.print(table)
    if summary.withheld_reasons:
        reasons = Table(title="withheld (file keys in deid_audit.json)")
        reasons.add_column("reason")
        reasons.add_column("n", justify="right")
        for reason, n in summary.withheld_reasons.most_common():
            reasons.add_row(reason, str(n))
        console.print(reasons)
    console.print(f"audit log: {summary.audit_path}")
    if summary.link_table:
        console.print(f"link table (private, mode 0600): {summary.link_table}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="deid")
def main(cfg: DictConfig) -> None:
    console = Console()
    check_command("deid", cfg)  # a bad value: one line naming the key, exit 2, before any work
    require_dir("input_dir", cfg.input_dir)
    require_writable_dir("output_dir", cfg.output_dir)
    try:
        pseudo = Pseudonymizer.from_config(cfg.secret_file, cfg.demo_key)
        opts = dict(OmegaConf.to_container(cfg.deid_options, resolve=True))  # type: ignore[arg-type]
        options = DeidOptions.from_mapping(
            {**opts, "allow_ultrasound": bool(cfg.allow_ultrasound)}
        )
        summary = deidentify_export(
            cfg.input_dir,
            cfg.output_dir,
            pseudo,
            options,
            link_table=cfg.link_table,
            progress=cfg.progress,
        )
    except (SecretError, DeidConfigError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]imaging deid: {exc}[/red]")
        raise SystemExit(EXIT_CONFIG) from exc
    print_summary(summary, console)


if __name__ == "__main__":
    main()
