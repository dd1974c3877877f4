"""Strip outputs and execution counts from notebooks before committing them.

Usage: ``.venv/bin/python scripts/strip_notebook_outputs.py [--check] [NOTEBOOK ...]``
(default: every ``notebooks/*.ipynb``). ``--check`` changes nothing and exits 1
when a notebook carries outputs (for CI or a pre-commit hook).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imaging.review.notebook import dirty_cells, read, strip_file

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="report notebooks with outputs; change nothing")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    bad = 0
    for path in paths:
        if args.check:
            cells = dirty_cells(read(path))
            if cells:
                bad += 1
                print(f"{path}: outputs or execution counts in code cells {cells}")
        elif strip_file(path):
            print(f"stripped {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
