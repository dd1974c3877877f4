"""`imaging secret new PATH`: create a project secret file (32 random bytes, mode 0600)."""

from __future__ import annotations

import argparse

from imaging.keys import new_secret_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging secret", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="write a fresh secret file (refuses to overwrite)")
    new.add_argument("path")
    args = parser.parse_args(argv)
    try:
        path = new_secret_file(args.path)
    except FileExistsError:
        print(f"imaging secret: '{args.path}' exists; not overwritten (losing a secret changes every key)")
        return 1
    print(f"secret written to {path} (mode 0600). Keep it outside the dataset; "
          f"use it with `imaging ingest secret_file={path}` or IMAGING_DEID_SECRET.")
    return 0
