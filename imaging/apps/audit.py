"""`imaging audit PATH... [--export DIR] [--mlflow URI] [--link-table CSV] [--manifest JSON] [--canary TOKEN]`.

``--export DIR`` takes the source export's identities as needles: its folder
names (real exports name folders after patients) and, from its DICOM headers,
patient names (whole and by component), IDs, issuer, accession numbers, birth
dates in the common written layouts, staff names, institution and addresses
(:mod:`imaging.audit.identities`; kept in memory only). Every output is read
decoded (gzip, JSON escapes, CSV, NIfTI header text, PNG text chunks, DICOM at any
depth, zip members, file and folder names). Hits say where (file and field or
offset) and which rule; a real value is never shown, only its length.

Exit 0 when nothing was found, 1 on any hit (a table of where, which field, which
rule, the value masked), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.table import Table

from imaging.audit import Hit, build_needles, default_canary, scan_paths

EXIT_HITS = 1
EXIT_USAGE = 2
MAX_ROWS = 200


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imaging audit", description="scan files and an MLflow store for PHI"
    )
    p.add_argument("paths", nargs="*", help="files or folders to scan (recursively)")
    p.add_argument(
        "--mlflow", action="append", default=[], metavar="URI", help="MLflow tracking URI to scan"
    )
    p.add_argument(
        "--link-table",
        action="append",
        default=[],
        metavar="CSV",
        help="original values to look for",
    )
    p.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="JSON",
        help="synthetic export manifest.json",
    )
    p.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="DIR",
        help="the source PACS export: its folder names and header identities are looked for",
    )
    p.add_argument(
        "--canary",
        action="append",
        default=None,
        metavar="TOKEN",
        help=f"canary token (default {default_canary()})",
    )
    p.add_argument(
        "--no-patterns", action="store_true", help="only look for tokens (no name/date patterns)"
    )
    p.add_argument("--no-artifacts", action="store_true", help="skip MLflow artifact files")
    return p


def print_hits(hits: list[Hit], console: Console) -> None:
    table = Table(title=f"PHI audit: {len(hits)} hit(s)")
    for col in ("where", "field", "rule", "value (masked)"):
        table.add_column(col, overflow="fold")
    for hit in hits[:MAX_ROWS]:
        table.add_row(hit.where, hit.field, hit.rule, hit.masked)
    console.print(table)
    if len(hits) > MAX_ROWS:
        console.print(f"... and {len(hits) - MAX_ROWS} more")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    logging.basicConfig(level=logging.WARNING)
    if not args.paths and not args.mlflow:
        console.print("[red]imaging audit: give at least one PATH or --mlflow URI[/red]")
        return EXIT_USAGE
    try:
        needles = build_needles(
            args.canary or [default_canary()], args.link_table, args.manifest, args.export
        )
        hits = scan_paths(
            args.paths, needles, patterns=not args.no_patterns, progress=sys.stderr.isatty()
        )
        for uri in args.mlflow:
            from imaging.audit.mlflow_scan import scan_mlflow

            hits += scan_mlflow(uri, needles, artifacts=not args.no_artifacts)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]imaging audit: {exc}[/red]")
        return EXIT_USAGE
    if hits:
        print_hits(hits, console)
        return EXIT_HITS
    console.print(
        f"[green]PHI audit: no hits ({len(needles)} values, patterns {'off' if args.no_patterns else 'on'})[/green]"
    )
    return 0
