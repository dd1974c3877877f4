"""`python -m imaging.train ...` (same as `imaging train ...`)."""

from __future__ import annotations

from imaging.apps.train import main

if __name__ == "__main__":
    main()
