"""`imaging submit train|infer|ingest [-m] [--dry-run] OVERRIDES...`.

Thin: split the command line, render + submit one sbatch script per job (per
sweep point with ``-m``) via :mod:`imaging.launch.submit`, print where
everything is. Not a ``@hydra.main`` app because the first word names the job
whose config is composed (``conf/train.yaml`` ...) and ``-m`` is expanded here
into separate Slurm jobs. Exit 2 on a config error, 1 when sbatch refused.
"""

from __future__ import annotations

import sys

USAGE = """usage: imaging submit train|infer|ingest [-m] [--dry-run] KEY=VALUE...
  launcher=slurm | launcher=<site profile>, launcher.nodes=4, launcher.time=12:00:00, ...
  every other KEY=VALUE goes to the job: `imaging submit train experiment=demo_seg launcher=slurm`
  -m / --multirun: a=1,2 b=x,y submits one job per point; --dry-run writes the script only"""


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from rich.console import Console

    from imaging.launch.render import LauncherConfigError
    from imaging.launch.submit import SubmitError, prepare, submit
    from imaging.launch.sweep import expand_sweep, point_suffix, swept_keys

    args = list(sys.argv[1:] if argv is None else argv)
    console, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    flags = {a for a in args if a.startswith("-")}
    words = [a for a in args if not a.startswith("-")]
    if not words or flags & {"-h", "--help"} or "=" in words[0]:
        print(USAGE, file=sys.stderr if not flags & {"-h", "--help"} else sys.stdout)
        return 0 if flags & {"-h", "--help"} else 2
    unknown = flags - {"-m", "--multirun", "--dry-run"}
    if unknown:
        err.print(f"[red]imaging submit: unknown option {', '.join(sorted(unknown))}\n{USAGE}")
        return 2
    kind, overrides = words[0], words[1:]
    multirun = bool(flags & {"-m", "--multirun"})
    try:
        points = expand_sweep(overrides) if multirun else [overrides]
        keys = swept_keys(overrides) if multirun else []
        prepared = [prepare(kind, p) for p in points]
        # Two sweep points must never share a run dir (they would resume each other's checkpoints).
        if kind == "train" and len({p.spec.run_dir for p in prepared}) < len(prepared):
            prepared = [prepare(kind, [*p, f"tracking.run_name={prep.tracking['run_name']}-{point_suffix(p, keys)}"])
                        for p, prep in zip(points, prepared, strict=True)]
    except (LauncherConfigError, HydraException, OmegaConfBaseException) as exc:
        err.print(f"[red]imaging submit {kind}: {exc}")
        return 2
    dry = "--dry-run" in flags
    status = 0
    for prep in prepared:
        try:
            sub = submit(prep, dry_run=dry)
        except SubmitError as exc:
            err.print(f"[red]{exc}")
            status = 1
            continue
        console.print(f"[bold]{'rendered (dry run)' if dry else 'submitted'} {kind} job {sub.job_id}[/]"
                      + (f"  array {sub.array}" if sub.array else ""))
        console.print(f"  script : {sub.script}")
        console.print(f"  logs   : {sub.log_for()}")
        console.print(f"  output : {sub.run_dir}")
        if sub.tracking_uri:
            what = f"run '{sub.run_name}' in " if sub.run_name else ""
            console.print(f"  MLflow : {what}experiment '{sub.experiment_name}' at {sub.tracking_uri}")
        if not dry:
            console.print(f"  follow : imaging status {sub.job_id}   |   tail -f {sub.log_for(0 if sub.array else None)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
