"""`imaging status JOBID [--json] [--index DIR] [--log-lines N]`: Slurm state + MLflow run of a job.

Slurm: ``scontrol show job`` (live and recently finished jobs), ``sacct`` where
the site keeps accounting, ``squeue`` as the last resort. The job's record
(``job-<id>.json``, written by ``imaging submit``) is found through the script
path Slurm reports, else in ``launcher.jobs_index_dir``; it names the run dir,
whose ``mlflow_run_id`` file (written by training's rank 0) gives the MLflow run.
Exit 0 when the job is known, 1 when neither Slurm nor the index knows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _index_dir() -> Path | None:
    from imaging.launch.submit import compose

    try:
        return Path(str(compose("submit", []).launcher.jobs_index_dir))
    except Exception:  # noqa: BLE001 - no usable config here: only the Slurm answer counts
        return None


def _mlflow(uri: str | None, run_id: str) -> dict[str, Any]:
    """Status, metrics and link of one MLflow run (an error string when the server is unreachable)."""
    if not uri:
        return {"run_id": run_id}
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        # Training logs its per-epoch metrics with step = epoch number.
        epochs = sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))
        info: dict[str, Any] = {
            "run_id": run_id, "status": run.info.status, "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name, "metrics": dict(sorted(run.data.metrics.items())),
            "epochs_logged": epochs,
        }
        if uri.startswith("http"):
            info["url"] = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        return info
    except Exception as exc:  # noqa: BLE001 - status must still show the Slurm side
        return {"run_id": run_id, "error": f"{type(exc).__name__}: {exc}"}


def collect(job_id: str, index_dir: Path | None) -> dict[str, Any]:
    from imaging.launch.slurm import job_states
    from imaging.launch.submit import load_submission

    states = job_states(job_id)
    job_dir = None
    for st in states:
        command = st.fields.get("Command")
        if command:
            job_dir = Path(command).parent
            break
    sub = load_submission(job_id, job_dir=job_dir, index_dir=index_dir)
    out: dict[str, Any] = {"job_id": job_id, "slurm": [asdict(s) | {"fields": {}} for s in states],
                           "slurm_source": states[0].source if states else None,
                           "submission": asdict(sub) if sub else None, "mlflow": None}
    if sub is not None:
        if sub.run_id_file and Path(sub.run_id_file).is_file():
            out["mlflow"] = _mlflow(sub.tracking_uri, Path(sub.run_id_file).read_text().strip())
        done = Path(sub.run_dir) / "done"
        if sub.kind == "infer" and done.is_dir():
            out["infer_done"] = sum(1 for _ in done.glob("*.json"))
        checkpoint = Path(sub.run_dir) / "checkpoints" / "last.pt"
        if checkpoint.is_file():
            out["last_checkpoint"] = str(checkpoint)
    return out


def _print(info: dict[str, Any], log_lines: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    table = Table(title=f"Slurm job {info['job_id']} ({info['slurm_source'] or 'unknown to Slurm now'})")
    for col in ("task", "state", "reason", "exit", "restarts", "elapsed", "nodes"):
        table.add_column(col)
    for s in info["slurm"]:
        table.add_row(s["job_id"], s["state"], s["reason"], s["exit_code"], str(s["restarts"]), s["elapsed"],
                      s["nodes"])
    console.print(table)
    sub = info["submission"]
    if sub is None:
        console.print("no submission record (not submitted with `imaging submit`, or another paths.root_dir)")
        return
    console.print(f"{sub['kind']} submitted {sub['submitted_at']}: script {sub['script']}")
    console.print(f"output: {sub['run_dir']}")
    if "last_checkpoint" in info:
        console.print(f"last checkpoint: {info['last_checkpoint']}")
    if "infer_done" in info:
        console.print(f"series done: {info['infer_done']}")
    ml = info["mlflow"]
    if ml:
        console.print(f"MLflow run {ml['run_id']} ({sub['tracking_uri']}): {ml.get('status', ml.get('error', ''))}"
                      + (f", epochs logged: {len(ml['epochs_logged'])} (last {ml['epochs_logged'][-1]})"
                         if ml.get("epochs_logged") else ""))
        if ml.get("url"):
            console.print(f"  {ml['url']}")
    elif sub["kind"] == "train":
        console.print(f"MLflow: no run yet (experiment '{sub['experiment_name']}' at {sub['tracking_uri']})")
    logs = sorted(Path(sub["job_dir"]).glob(Path(sub["log"].replace("%j", sub["job_id"])
                                                  .replace("%A", sub["job_id"]).replace("%a", "*")).name))
    for path in logs[:4]:
        tail = path.read_text(errors="replace").splitlines()[-log_lines:]
        console.print(f"[dim]--- {path} (last {len(tail)} lines)[/]")
        console.print("\n".join(tail), markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging status", description=__doc__.splitlines()[0])
    parser.add_argument("job_id", help="Slurm job id (an array task as 123_4 works too)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--index", type=Path, default=None, help="jobs index dir (default: launcher.jobs_index_dir)")
    parser.add_argument("--log-lines", type=int, default=8)
    args = parser.parse_args(argv)
    info = collect(args.job_id, args.index or _index_dir())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print(info, args.log_lines)
    return 0 if (info["slurm"] or info["submission"]) else 1


if __name__ == "__main__":
    sys.exit(main())
