"""Where the package's own files are: the Hydra configs and the sbatch templates.

Both ship inside the package, so a wheel installed into any environment runs from any
folder (before, ``conf/`` and ``slurm/`` sat beside the package and only an editable
checkout found them). A site keeps its own experiments, cluster profiles and selection
rules in folders of its own: ``IMAGING_CONFIG_DIR`` (one folder, or several separated by
``os.pathsep``) is put on Hydra's search path after the shipped configs (so site files take
names of their own), as Hydra's own ``--config-dir`` does for one command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
TEMPLATES_DIR = PACKAGE_DIR / "launch" / "templates"
SITE_CONFIG_ENV = "IMAGING_CONFIG_DIR"


def site_config_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The site's config folders from ``IMAGING_CONFIG_DIR`` (each must exist).

    Raises:
        UsageError: a named folder does not exist (a typo would otherwise be silent): exit 2.
    """
    env = os.environ if environ is None else environ
    dirs = [Path(p).expanduser().resolve() for p in env.get(SITE_CONFIG_ENV, "").split(os.pathsep) if p.strip()]
    for d in dirs:
        if not d.is_dir():
            from imaging.errors import UsageError

            raise UsageError(f"{SITE_CONFIG_ENV}: no such folder '{d}'")
    return dirs


def searchpath_override(environ: Mapping[str, str] | None = None) -> list[str]:
    """``hydra.searchpath=[file://...]`` for the site's folders, or nothing when none is set."""
    dirs = site_config_dirs(environ)
    if not dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]"]
