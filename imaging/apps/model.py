"""`imaging model list [NAME] | show NAME | promote NAME VERSION --alias champion`.

VERSION is a number or an alias (``promote demo_seg candidate --alias champion``).
The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded
``sqlite:///<root>/mlflow/mlflow.db`` with the project root of :mod:`imaging.project`
(the same place ``imaging/conf/paths/default.yaml`` puts it).
"""

from __future__ import annotations

import argparse
import datetime

from rich.console import Console
from rich.table import Table

from imaging.project import root_dir

console = Console()


def default_tracking_uri() -> str:
    from imaging.tracking.store import project_db, tracking_uri

    return tracking_uri(None, project_db(root_dir()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imaging model", description="MLflow model registry: list, show, promote")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: see module doc)")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="registered models, or one model's versions")
    ls.add_argument("name", nargs="?")
    show = sub.add_parser("show", help="a model's aliases, versions and source runs")
    show.add_argument("name")
    pr = sub.add_parser("promote", help="point an alias at a version (number or alias)")
    pr.add_argument("name")
    pr.add_argument("version", help="version number or an existing alias, e.g. candidate")
    pr.add_argument("--alias", default="champion")
    return p


def _when(ms: int | None) -> str:
    return datetime.datetime.fromtimestamp((ms or 0) / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M") if ms else ""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from mlflow.exceptions import MlflowException

    from imaging.tracking.registry import list_models, promote

    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.cmd == "promote":
            version = promote(args.name, args.version, args.alias, tracking_uri=uri)
            console.print(f"{args.name}: @{args.alias} -> version {version}  (models:/{args.name}@{args.alias})")
            return 0
        if args.cmd == "list" and args.name is None:
            table = Table(title=f"registered models ({uri})")
            for col in ("name", "latest version", "aliases"):
                table.add_column(col)
            for m in list_models(tracking_uri=uri):
                table.add_row(m["name"], str(m["latest"]),
                              ", ".join(f"@{a}->v{v}" for a, v in sorted(m["aliases"].items())))
            console.print(table)
            return 0
        versions = list_models(args.name, tracking_uri=uri)
        table = Table(title=f"{args.name} ({uri})")
        for col in ("version", "aliases", "source run", "created", "status", "val dice/auc"):
            table.add_column(col)
        for v in versions:
            scores = ", ".join(f"{k[4:]}={val}" for k, val in sorted(v["tags"].items())
                               if k.startswith("val_") and ("dice" in k or "auc" in k))
            table.add_row(v["version"], " ".join(f"@{a}" for a in v["aliases"]), v["run_id"] or "",
                          _when(v["created"]), v["status"], scores)
        console.print(table)
        return 0
    except MlflowException as exc:
        console.print(f"[red]imaging model {args.cmd}: {exc.message}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
