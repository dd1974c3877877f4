"""`imaging <command> ...`: one console script, a thin dispatcher.

Hydra commands take ``key=value`` overrides (``imaging ingest input_dir=... output_dir=...``);
the others take ordinary flags (``imaging model promote NAME VERSION --alias champion``).
Each command lives in :mod:`imaging.apps` and is imported only when called, so
``imaging ingest`` never pays for importing torch or mlflow.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module, kind, help). kind "hydra": module.main() reads sys.argv;
# kind "argv": module.main(argv) with the remaining arguments.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("imaging.apps.synth", "hydra", "write a synthetic PACS export (phantoms + PHI canaries)"),
    "ingest": ("imaging.apps.ingest", "hydra", "PACS export -> de-identified NIfTI volumes + catalog"),
    "deid": ("imaging.apps.deid", "hydra", "PACS export -> de-identified DICOM copy (PS3.15 basic profile)"),
    "audit": ("imaging.apps.audit", "argv", "scan files and an MLflow store for PHI; non-zero exit on a hit"),
    "train": ("imaging.apps.train", "hydra", "train a MONAI model (Hydra config, DDP, MLflow)"),
    "infer": ("imaging.apps.infer", "hydra", "batch inference from a registered model -> NIfTI, DICOM SEG, report"),
    "model": ("imaging.apps.model", "argv", "model registry: list, promote (set alias), show"),
    "submit": ("imaging.apps.submit", "hydra", "submit train|infer|ingest to Slurm (sbatch rendered into the run dir)"),
    "status": ("imaging.apps.status", "argv", "Slurm state of a job and its MLflow run"),
    "secret": ("imaging.apps.secret", "argv", "create a project secret file for keyed pseudonyms"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: imaging <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`imaging <command> --help` shows a command's options (Hydra commands: its config)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"imaging: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, kind, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    if kind == "hydra":
        sys.argv = [f"imaging {name}", *rest]
        # Hydra resolves config_path="../../conf" against the app's *file* only when the
        # task function looks like a script (module "__main__"); imported from a package it
        # would look for an importable package named 'conf' and fail. Say it is a script.
        os.environ["HYDRA_MAIN_MODULE"] = "__main__"
        result = module.main()
    else:
        result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
