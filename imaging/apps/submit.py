"""`imaging submit train|infer|ingest|pipeline [-m] [--dry-run] [--dependency=...] OVERRIDES...`.

Thin: split the command line, compose + check + render one sbatch script per job
(per sweep point with ``-m``; three chained jobs for ``pipeline``) via
:mod:`imaging.launch`, submit, print where everything is. Not a ``@hydra.main``
app because the first word names the job whose config is composed
(``imaging/conf/train.yaml`` ...) and ``-m`` is expanded here into separate Slurm jobs.
Exit 2 on a config error (one line naming the key, nothing submitted), 1 when
sbatch refused a job.
"""

from __future__ import annotations

import sys

USAGE = """usage: imaging submit train|infer|ingest [-m] [--dry-run] [--dependency=afterok:ID] KEY=VALUE...
       imaging submit pipeline [--dry-run] SHARED... ingest: KEY=VALUE... train: KEY=VALUE... infer: KEY=VALUE...
  launcher=slurm | launcher=<site profile>, launcher.nodes=4, launcher.time=12:00:00, ...
  every other KEY=VALUE goes to the job: `imaging submit train experiment=demo_seg launcher=slurm`
  -m / --multirun: a=1,2 b=x,y submits one job per point; --dry-run writes the script only
  pipeline: ingest -> train -> infer as jobs chained with --dependency=afterok (train reads the
  ingested dataset, infer the model train registers, unless given)
  secrets: +launcher.secret_files.NAME=FILE (mode 0600, read at run time) or export NAME first"""


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from imaging.apps.errors import describe
    from imaging.errors import UsageError
    from imaging.launch.checks import check_job, check_secrets
    from imaging.launch.submit import Prepared, SubmitError, pin_model, prepare, submit
    from imaging.launch.sweep import expand_sweep, point_suffix, swept_keys
    from imaging.settings import check_command

    args = list(sys.argv[1:] if argv is None else argv)
    console, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    flags = {a for a in args if a.startswith("-")}
    words = [a for a in args if not a.startswith("-")]
    if not words or flags & {"-h", "--help"} or "=" in words[0]:
        print(USAGE, file=sys.stderr if not flags & {"-h", "--help"} else sys.stdout)
        return 0 if flags & {"-h", "--help"} else 2
    dependency = next((f.split("=", 1)[1] for f in flags if f.startswith("--dependency=")), None)
    unknown = {f for f in flags if not f.startswith("--dependency=")} - {"-m", "--multirun", "--dry-run"}
    if unknown:
        err.print(f"[red]imaging submit: unknown option {', '.join(sorted(unknown))}\n{USAGE}")
        return 2
    kind, overrides = words[0], words[1:]
    multirun = bool(flags & {"-m", "--multirun"})
    dry = "--dry-run" in flags
    chain = kind == "pipeline"
    try:
        if chain:
            from imaging.launch.pipeline import prepare_pipeline

            if multirun:
                raise UsageError("-m: not supported for a pipeline (sweep with `imaging submit train -m`)")
            stages = [(s.prepared, s.produced) for s in prepare_pipeline(overrides)]
        else:
            points = expand_sweep(overrides) if multirun else [overrides]
            keys = swept_keys(overrides) if multirun else []
            prepared = [prepare(kind, p) for p in points]
            # Two sweep points must never share a run dir (they would resume each other's checkpoints).
            if kind == "train" and len({p.spec.run_dir for p in prepared}) < len(prepared):
                prepared = [prepare(kind, [*p, f"tracking.run_name={prep.tracking['run_name']}-"
                                              f"{point_suffix(p, keys)}"])
                            for p, prep in zip(points, prepared, strict=True)]
            stages = [(p, set()) for p in prepared]
        # Everything the job would refuse at start, refused now (before it waits in the queue).
        for prep, produced in stages:
            check_launcher(prep.launcher)
            check_secrets(prep.launcher)
            if prep.cfg is not None:
                check_command(prep.kind, prep.cfg)  # a value out of range: refused even in a dry run
                try:
                    check_job(prep.kind, prep.cfg, produced)
                    pin_model(prep, produced)  # infer: @alias -> the version it names now, for every task
                except Exception:
                    if not dry:
                        raise
                    err.print(f"[yellow]imaging submit {prep.kind} (dry run): the job would fail: "
                              f"{describe(sys.exc_info()[1])[1]}")  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the CLI's error contract: one line, exit 2 for config errors
        code, line = describe(exc)
        err.print(f"[red]imaging submit {kind}: {line}", highlight=False)
        return code
    status = 0
    previous: str | None = dependency
    for prep, _ in stages:
        assert isinstance(prep, Prepared)
        dep = previous if (chain or dependency) else None
        try:
            sub = submit(prep, dry_run=dry, dependency=dep)
        except SubmitError as exc:
            err.print(f"[red]{exc}")
            status = 1
            if chain:
                err.print("[red]imaging submit pipeline: later jobs not submitted")
                break
            continue
        if chain:
            previous = f"afterok:{sub.job_id}"
        console.print(f"[bold]{'rendered (dry run)' if dry else 'submitted'} {prep.kind} job {sub.job_id}[/]"
                      + (f"  array {sub.array}" if sub.array else "")
                      + (f"  after {sub.dependency}" if sub.dependency else ""))
        console.print(f"  script : {sub.script}")
        console.print(f"  logs   : {sub.log_for()}")
        console.print(f"  output : {sub.run_dir}")
        if sub.model_pinned_from:
            console.print(f"  model  : {sub.model_uri} ({sub.model_pinned_from} at submission)")
        if sub.tracking_uri:
            what = f"run '{sub.run_name}' in " if sub.run_name else ""
            console.print(f"  MLflow : {what}experiment '{sub.experiment_name}' at {sub.tracking_uri}")
        if not dry:
            console.print(f"  follow : imaging status {sub.job_id}   |   tail -f {sub.log_for(0 if sub.array else None)}")
    return status


def check_launcher(launcher: dict[str, object]) -> None:
    """The job's launcher values (types, ranges) as the ``launcher`` settings declare them.

    Raises:
        SettingsError: the first ``launcher.*`` key out of range (exit 2, nothing submitted).
    """
    from omegaconf import OmegaConf

    from imaging.settings import check_command

    check_command("submit", OmegaConf.create({"launcher": launcher}))


if __name__ == "__main__":
    sys.exit(main())
