"""`imaging where` (root, tracking URI, registry) and `imaging init [DIR]` (make a project root)."""

from __future__ import annotations

import argparse
import logging
import os

from imaging.project import MARKER, find_root, write_marker
from imaging.resources import CONF_DIR


def store_uris() -> tuple[str, str, str | None]:
    """``(tracking_uri, registry_uri, artifact_location)`` exactly as ``imaging train`` would use them."""
    from hydra import compose, initialize_config_dir

    from imaging.tracking.runs import tracking_uri_from_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    uri, location = tracking_uri_from_config(cfg, probe=False)
    return uri, os.environ.get("MLFLOW_REGISTRY_URI") or uri, location


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="imaging where", description=__doc__).parse_args(argv)
    logging.getLogger("imaging.project").setLevel(logging.ERROR)  # the root line below says it
    root = find_root()
    tracking, registry, artifacts = store_uris()
    print(f"project root:  {root.describe()}")
    print(f"tracking URI:  {tracking}" + ("  (from $MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") else ""))
    print(f"model registry: {registry}")
    if artifacts:
        print(f"artifacts:     {artifacts}")
    return 0


def init(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imaging init", description="make DIR (default: here) a project root")
    p.add_argument("dir", nargs="?", default=".")
    args = p.parse_args(argv)
    marker = write_marker(args.dir)
    print(f"project root: {marker.parent} ({MARKER} written); runs/, logs/ and mlflow/ go here")
    return 0
