"""`imaging mlflow sync RUN_DIR [--tracking-uri URL] [--token-file FILE]`.

Uploads the offline MLflow store(s) a job wrote into its run dir (compute nodes
without a route to the server: ``tracking.offline=true`` or an unreachable
server at start) into the tracking server. The target is ``--tracking-uri``,
else ``MLFLOW_TRACKING_URI``, else the server the job was configured for
(recorded in the store). Run it again at will: a second sync adds nothing.
A training's offline segments go into its one server run (the run dir's ledger,
``mlflow_runs.json``): a job that went offline and back is one run after sync.
A run dir without an offline store, or a store with no server known, is a usage
error (exit 2, one line naming it), not an internal one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imaging mlflow", description="MLflow helpers for clusters")
    sub = p.add_subparsers(dest="cmd", required=True)
    sync = sub.add_parser("sync", help="upload a run dir's offline MLflow store into the tracking server")
    sync.add_argument("run_dir", type=Path)
    sync.add_argument("--tracking-uri", default=None, help="target server (default: $MLFLOW_TRACKING_URI, "
                      "else the server recorded in the offline store)")
    sync.add_argument("--token-file", default=None, help="file holding the server's bearer token "
                      "(default: $MLFLOW_TRACKING_TOKEN)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from imaging.tracking.sync import sync_run_dir

    target = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    reports = sync_run_dir(args.run_dir, target, {"token_file": args.token_file})
    for report in reports:
        print(f"runs: {report.runs_created} new, {report.runs_existing} already there; "
              f"{report.metrics_added} metric points, {report.params_added} params, "
              f"{report.artifacts_added} artifacts, {report.versions_created} model versions added")
        for offline, server in sorted(report.run_map.items()):
            print(f"  offline run {offline} -> server run {server}")
    return 0
