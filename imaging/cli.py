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

from imaging.errors import EXIT_USAGE

# command -> (module, kind, help). kind "hydra": module.main() reads sys.argv;
# kind "argv": module.main(argv) with the remaining arguments.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("imaging.apps.synth", "hydra", "write a synthetic PACS export (phantoms + PHI canaries)"),
    "ingest": ("imaging.apps.ingest", "hydra", "PACS export -> de-identified NIfTI volumes + catalog"),
    "deid": ("imaging.apps.deid", "hydra", "PACS export -> de-identified DICOM copy (PS3.15 basic profile)"),
    "audit": ("imaging.apps.audit", "argv", "scan files and an MLflow store for PHI; non-zero exit on a hit"),
    "pull": ("imaging.apps.pull", "hydra", "DICOMweb query + retrieve studies into a local export (resumable)"),
    "train": ("imaging.apps.train", "hydra", "train a MONAI model (Hydra config, DDP, MLflow)"),
    "infer": ("imaging.apps.infer", "hydra", "batch inference from a registered model -> NIfTI, DICOM SEG, report"),
    "federate": ("imaging.apps.federate", "hydra", "federated training across sites with Flower (FedAvg/FedProx)"),
    "evaluate": ("imaging.apps.evaluate", "hydra", "a registered model evaluated at every federation site over Flower"),
    "model": ("imaging.apps.model", "argv", "model registry: list, promote (set alias), show"),
    "submit": ("imaging.apps.submit", "hydra", "submit train|infer|ingest to Slurm (sbatch rendered into the run dir)"),
    "mlflow": ("imaging.apps.mlflow", "argv", "MLflow on a cluster: sync RUN_DIR uploads an offline run to the server"),
    "status": ("imaging.apps.status", "argv", "Slurm state of a job and its MLflow run"),
    "secret": ("imaging.apps.secret", "argv", "create a project secret file for keyed pseudonyms"),
    "init": ("imaging.apps.where", "argv-init", "make a folder the project root (writes the .imaging marker)"),
    "where": ("imaging.apps.where", "argv", "print the project root, tracking URI and model registry in use"),
}

EXIT_CODES = """exit codes (every command):
  0  done
  1  done, but some inputs failed (listed in the catalog / report)
  2  bad invocation or config: one line names the key or path (nothing was done)
  3  preempted after checkpointing (the Slurm script requeues the job)
  4  unexpected error (a bug): rerun with --debug (or HYDRA_FULL_ERROR=1) for the traceback"""



def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: imaging <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`imaging <command> --help` shows a command's options (Hydra commands: its config).",
              "`imaging --version` prints the version; IMAGING_CONFIG_DIR adds a site's config folder.",
              "`--debug` after the command shows a traceback on error.", "", EXIT_CODES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from imaging import __version__

        print(f"imaging {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        from imaging.errors import closest

        hint = closest(name, COMMANDS)
        print(f"imaging: unknown command '{name}' ({hint}); `imaging --help` lists them", file=sys.stderr)
        return EXIT_USAGE
    debug = "--debug" in rest or os.environ.get("HYDRA_FULL_ERROR") == "1"
    rest = [a for a in rest if a != "--debug"]
    try:
        return _dispatch(name, rest)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"imaging {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from imaging.apps.errors import describe

        code, line = describe(exc)
        print(f"imaging {name}: {line}", file=sys.stderr)
        return code


def _dispatch(name: str, rest: list[str]) -> int:
    module_name, kind, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    if kind == "hydra":
        _refuse_renamed(rest)
        # The site's folders first: after flags such as `--cfg job`, argparse takes no overrides.
        sys.argv = [f"imaging {name}", *_site_searchpath(rest), *rest]
        # Hydra resolves config_path="../../conf" against the app's *file* only when the
        # task function looks like a script (module "__main__"); imported from a package it
        # would look for an importable package named 'conf' and fail. Say it is a script.
        os.environ["HYDRA_MAIN_MODULE"] = "__main__"
        # Hydra prints its own multi-line report (and a stack-trace hint) unless told to
        # re-raise; we re-raise and report in one line (imaging.apps.errors.describe).
        os.environ["HYDRA_FULL_ERROR"] = "1"
        _quiet_hydra_job_error()
        _skip_hydra_mode_probe(rest)
        result = module.main()
    elif kind == "argv-init":
        result = module.init(rest)
    else:
        result = module.main(rest)
    return int(result or 0)


# Keys renamed so that one setting has one key in every command: refused with the new name
# (a silently ignored secret or option would be worse than an error).
RENAMED_KEYS = {
    "deid.secret_file": "secret_file", "deid.demo_key": "demo_key", "deid.link_table": "link_table",
    "deid.allow_ultrasound": "allow_ultrasound", "deid.options": "deid_options",
    "seg.deid_options": "deid_options",
}


def _refuse_renamed(args: list[str]) -> None:
    from imaging.errors import UsageError

    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        for old, new in RENAMED_KEYS.items():
            if key == old or key.startswith(old + "."):
                raise UsageError(f"{key}: renamed to {new + key[len(old):]} (one key per setting in every command)")


def _site_searchpath(args: list[str]) -> list[str]:
    """The site's config folders (``IMAGING_CONFIG_DIR``) on Hydra's search path.

    A site's own experiments, cluster profiles and selection rules live outside the
    package (imaging.resources); an explicit ``hydra.searchpath=`` on the command line wins.
    """
    if any(a.lstrip("+").startswith("hydra.searchpath") for a in args):
        return []
    from imaging.resources import searchpath_override

    return searchpath_override()


def _quiet_hydra_job_error() -> None:
    """Stop Hydra writing "Error executing job with overrides: [...]" before it re-raises.

    hydra-core 1.3.8 (pinned) writes that line straight to stderr in
    ``JobReturn.return_value``; the overrides it lists are already on the user's command
    line, and the one line :func:`main` prints says what was wrong.
    """
    from hydra.core.utils import JobReturn, JobStatus

    def return_value(self: JobReturn) -> object:
        if self.status == JobStatus.COMPLETED:
            return self._return_value
        raise self._return_value

    JobReturn.return_value = property(return_value, JobReturn.return_value.fset)  # type: ignore[assignment,method-assign,attr-defined]


def _skip_hydra_mode_probe(args: list[str]) -> None:
    """Compose the config once per command, not twice (~0.1 s of every start-up).

    hydra-core 1.3.8 (pinned) composes the whole config a first time only to read
    ``hydra.mode``, then again to run. None of our configs sets ``hydra.mode``, so
    the answer is known from the command line: ``--multirun``/``-m`` or not, which
    Hydra itself falls back to when the probe returns None. A user who overrides
    ``hydra.mode`` gets Hydra's probe as before.
    """
    if any(a.lstrip("+").startswith("hydra.mode") for a in args):
        return
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
