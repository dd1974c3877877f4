"""`imaging synth output_dir=... subjects=N seed=S`: write a synthetic PACS export."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from imaging.resources import CONF_DIR
from imaging.settings import check_command


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="synth")
def main(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    from imaging.synth import generate

    check_command("synth", cfg)  # a bad value: one line naming the key, exit 2, before any work
    if not cfg.output_dir:
        raise SystemExit("imaging synth: output_dir=... is required")
    cases = OmegaConf.to_object(cfg.cases) if OmegaConf.is_list(cfg.cases) else str(cfg.cases)
    manifest = generate(
        cfg.output_dir,
        subjects=int(cfg.subjects),
        seed=int(cfg.seed),
        cases=cases,  # type: ignore[arg-type]
        size=str(cfg.size),
        layout=str(cfg.layout),
        dicomdir=bool(cfg.dicomdir),
        overwrite=bool(cfg.overwrite),
        scanner=str(cfg.get("scanner", "default")),
    )
    table = Table(title=f"synthetic export: {cfg.output_dir}")
    for col in ("modality", "series", "files", "expected"):
        table.add_column(col)
    counts: dict[tuple[str, str], list[int]] = {}
    for s in manifest["series"]:
        key = (s["modality"], s["expected"]["status"])
        c = counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += len(s["files"])
    for (modality, status), (n_series, n_files) in sorted(counts.items()):
        table.add_row(modality, str(n_series), str(n_files), status)
    console = Console()
    console.print(table)
    console.print(f"{manifest['n_files']} files, manifest: {cfg.output_dir}/manifest.json")


if __name__ == "__main__":
    main()
