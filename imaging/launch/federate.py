"""A federation on Slurm: one SuperLink job (the coordinator) and one SuperNode job per site.

``slurm/federate_superlink.sbatch.j2`` starts ``flower-superlink`` on one HTTP port,
publishes ``host:port`` in ``<run_dir>/superlink.address`` (shared storage) and submits
the run with ``flwr run`` (the same Flower App and ``config=<run_dir>/federate.yaml`` as
``imaging federate``). ``slurm/federate_supernode.sbatch.j2`` starts one site's
``flower-supernode`` with only that site's folders in ``--node-config``; it dials
``federation.superlink`` when set, else waits (bounded) for the address file.

Rendering is a pure function of the configs (no clock, no environment), like
:mod:`imaging.launch.render`, so ``tests/reference/federate_*.sbatch`` hold the exact text::

    python -m imaging.launch.federate experiment=X federation.sites=[A,B] \\
        federation.datasets.A=/data/a federation.datasets.B=/data/b launcher=slurm [--dry-run]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from omegaconf import DictConfig, OmegaConf

from imaging.federated.config import SERVER_CONFIG, write_server_config
from imaging.fsutil import atomic_write_text
from imaging.launch.render import LauncherConfigError, _check, default_templates_dir
from imaging.launch.submit import CONF_DIR, compose, sbatch, split_overrides
from imaging.settings import check_command

log = logging.getLogger(__name__)

TEMPLATES = {"superlink": "federate_superlink.sbatch.j2", "supernode": "federate_supernode.sbatch.j2"}
ADDRESS_FILE = "superlink.address"
# SuperLink ports come from [PORT_BASE, PORT_BASE + PORT_SPAN): above the registered
# services most clusters run, below Linux's ephemeral range (32768-60999), so an outgoing
# connection on the node can never hold the port the SuperLink needs.
PORT_BASE, PORT_SPAN = 20000, 10000
EPHEMERAL = range(32768, 61000)
_SITE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class FederationJob:
    """One rendered federation job, not yet submitted."""

    role: str  # superlink | supernode
    site: str | None
    script: str
    script_path: Path


def superlink_port(fed: Mapping[str, Any], run_dir: Path) -> int:
    """The SuperLink's port: ``federation.slurm.port``, else ``federation.superlink``'s, else
    derived from the run dir (the same run always gets the same port; two runs rarely share).

    Raises
    ------
    LauncherConfigError
        A configured port in the ephemeral range or outside 1024-65535.
    """
    slurm = fed.get("slurm") or {}
    port = slurm.get("port")
    if port is None and fed.get("superlink"):
        port = str(fed["superlink"]).rsplit(":", 1)[-1]
    if port is None:
        digest = hashlib.sha256(str(run_dir).encode()).digest()
        return PORT_BASE + int.from_bytes(digest[:4], "big") % PORT_SPAN
    if not str(port).isdigit() or not 1024 <= int(port) <= 65535 or int(port) in EPHEMERAL:
        raise LauncherConfigError(f"SuperLink port {port!r}: use 1024-32767 or 61000-65535 (32768-60999 is the "
                                  "ephemeral range, where the node's own outgoing connections may hold it)")
    return int(port)


def node_config(site: str, dataset_dir: str, work_dir: str) -> str:
    """The node config file's TOML text: what the site's ClientApp reads (``imaging.federated.site``).

    The job writes it to ``<work dir>/node-config.toml`` (a quoted heredoc: bash expands nothing)
    and passes that path to ``--node-config``: Flower's inline ``key="value"`` pairs end at any
    quote in a value, so a dataset under a folder named ``O'BRIEN`` or ``"THX"`` could not start.
    JSON string escapes are TOML basic-string escapes.
    """
    values = {"site": site, "dataset-dir": dataset_dir, "work-dir": work_dir}
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def _wrap(launcher: Mapping[str, Any], run_dir: Path, workdir: Path, binds: Sequence[str]) -> str:
    """Command prefix: ``apptainer exec ... IMAGE`` when ``launcher.container`` is set, else nothing."""
    container = launcher.get("container")
    if not container:
        return ""
    bind = ",".join(dict.fromkeys([str(run_dir), str(workdir), *binds,
                                   *(str(b) for b in launcher.get("container_binds") or [])]))
    return f"apptainer exec --nv --bind {shlex.quote(bind)} {shlex.quote(str(container))} "


def _context(launcher: Mapping[str, Any], fed: Mapping[str, Any], run_dir: Path, workdir: Path,
             job_name: str) -> dict[str, Any]:
    _check(launcher)
    slurm = dict(fed.get("slurm") or {})
    insecure = bool(slurm.get("insecure", True))
    if not insecure and not (slurm.get("ssl_certfile") and slurm.get("ssl_keyfile")):
        raise LauncherConfigError("federation.slurm.insecure=false needs federation.slurm.ssl_certfile and "
                                  "federation.slurm.ssl_keyfile (docs/federated.md: certificates)")
    return {**{k: launcher.get(k) for k in launcher}, "q": shlex.quote, "run_dir": run_dir, "workdir": workdir,
            "job_dir": run_dir / "slurm", "job_name": job_name, "slurm": slurm, "insecure": insecure,
            "env": dict(launcher.get("env") or {}), "env_setup": list(launcher.get("env_setup") or []),
            "extra_sbatch": list(launcher.get("extra_sbatch") or []), "address_file": run_dir / ADDRESS_FILE}


def _template(launcher: Mapping[str, Any], name: str) -> jinja2.Template:
    root = Path(launcher.get("templates_dir") or default_templates_dir())
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env.get_template(name)


def render_superlink(launcher: Mapping[str, Any], fed: Mapping[str, Any], *, run_dir: Path, workdir: Path,
                     job_name: str, finish: str = "") -> str:
    """The SuperLink job's script (coordinator: ``flower-superlink`` + ``flwr run``); ``finish``:
    a command the job runs after a successful run (``imaging evaluate`` logs its result so)."""
    ctx = _context(launcher, fed, run_dir, workdir, job_name)
    ctx["finish"] = finish
    slurm = ctx["slurm"]
    advertise = slurm.get("advertise") or (str(fed["superlink"]).rsplit(":", 1)[0] if fed.get("superlink") else None)
    host = str(slurm.get("host") or "0.0.0.0")
    # Where this job checks that the SuperLink listens (and `flwr run` connects without TLS).
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    ctx.update(port=superlink_port(fed, run_dir), advertise=advertise, server_config=run_dir / SERVER_CONFIG,
               probe=probe,
               wrap=_wrap(launcher, run_dir, workdir, []))
    return _template(launcher, TEMPLATES["superlink"]).render(**ctx)


def render_supernode(launcher: Mapping[str, Any], fed: Mapping[str, Any], *, site: str, dataset_dir: Path,
                     run_dir: Path, workdir: Path, job_name: str) -> str:
    """One site's SuperNode job script.

    Raises
    ------
    LauncherConfigError
        A site name that is not a plain word (it names files and jobs).
    """
    if not _SITE_RE.match(site):
        raise LauncherConfigError(f"federation.sites: site name '{site}' must be letters, digits, '_', '.', '-'")
    ctx = _context(launcher, fed, run_dir, workdir, job_name)
    work_dir = run_dir / "sites" / site
    keys = dict(ctx["slurm"].get("supernode_private_keys") or {})
    ctx.update(site=site, superlink=str(fed.get("superlink") or ""), root_certificates=fed.get("root_certificates"),
               private_key=keys.get(site), node_config=node_config(site, str(dataset_dir), str(work_dir)),
               work_dir=work_dir,
               wrap=_wrap(launcher, run_dir, workdir, [str(dataset_dir)]))
    return _template(launcher, TEMPLATES["supernode"]).render(**ctx)


def _site_datasets(cfg: DictConfig) -> dict[str, Path]:
    sites = [str(s) for s in cfg.federation.sites]
    if not sites or len(set(sites)) != len(sites):
        raise LauncherConfigError(f"federation.sites={sites}: name one or more distinct sites")
    given = {str(k): Path(str(v)) for k, v in (cfg.federation.get("datasets") or {}).items()}
    missing = [s for s in sites if s not in given]
    if missing and cfg.federation.get("superlink"):
        # Cross-hospital: those sites run their SuperNodes themselves (docs/federated.md).
        log.info("no SuperNode job for site(s) %s: they dial %s themselves", missing, cfg.federation.superlink)
        return {s: given[s] for s in sites if s in given}
    if missing:
        raise LauncherConfigError(f"federation.datasets has no folder for site(s) {missing}: each SuperNode job "
                                  f"needs its site's dataset, e.g. federation.datasets.{missing[0]}=/data/ds")
    return {s: given[s] for s in sites}


def prepare(overrides: Sequence[str], *, cwd: Path | None = None,
            conf_dir: Path = CONF_DIR) -> tuple[DictConfig, list[FederationJob]]:
    """Compose the ``federate`` and launcher configs; render the SuperLink job and one job per site.

    Raises
    ------
    LauncherConfigError
        A launcher or federation value the jobs cannot run with (named).
    hydra.errors.HydraException
        The overrides do not compose.
    """
    cwd = (cwd or Path.cwd()).resolve()
    launcher_ov, job_ov = split_overrides(overrides)
    launcher: dict[str, Any] = OmegaConf.to_container(compose("submit", launcher_ov, conf_dir).launcher,
                                                      resolve=True)  # type: ignore[assignment]
    if launcher.get("name") != "slurm":
        raise LauncherConfigError(f"launcher={launcher.get('name')}: a federation on Slurm needs launcher=slurm "
                                  "(or a cluster profile); `imaging federate` runs a local one")
    cfg = compose("federate", job_ov, conf_dir)
    check_command("federate", cfg)  # as `imaging federate` does; and the Slurm launcher's values:
    check_command("submit", OmegaConf.create({"launcher": launcher}))
    run_dir = Path(str(cfg.run_dir))
    run_dir = run_dir if run_dir.is_absolute() else cwd / run_dir
    cfg.run_dir = str(run_dir)
    fed: dict[str, Any] = OmegaConf.to_container(cfg.federation, resolve=True)  # type: ignore[assignment]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"fed-{cfg.tracking.experiment_name}")
    job_dir = run_dir / "slurm"
    jobs = [FederationJob("superlink", None, render_superlink(
        launcher, fed, run_dir=run_dir, workdir=cwd, job_name=f"{base}-superlink"),
        job_dir / "federate_superlink.sbatch")]
    for site, dataset in _site_datasets(cfg).items():
        jobs.append(FederationJob("supernode", site, render_supernode(
            launcher, fed, site=site, dataset_dir=dataset, run_dir=run_dir, workdir=cwd,
            job_name=f"{base}-site-{site}"), job_dir / f"federate_supernode_{site}.sbatch"))
    return cfg, jobs


def evaluation_jobs(cfg: DictConfig, datasets: Mapping[str, Path], *, finish: str,
                    workdir: Path) -> list[FederationJob]:
    """``imaging evaluate ... launcher=slurm``: the roles of a federation on Slurm (a SuperLink job,
    one SuperNode job per site in ``datasets``) for the evaluation config ``cfg`` (its
    ``run_dir`` holds the model files already); the SuperLink job ends with ``finish``.

    Raises
    ------
    LauncherConfigError
        ``cfg.launcher`` is not a Slurm launcher, or a launcher/federation value the jobs
        cannot run with (named).
    """
    launcher: dict[str, Any] = OmegaConf.to_container(cfg.launcher, resolve=True)  # type: ignore[assignment]
    if launcher.get("name") != "slurm":
        raise LauncherConfigError(f"launcher={launcher.get('name')}: Slurm jobs need launcher=slurm (or a cluster "
                                  "profile)")
    run_dir = Path(str(cfg.run_dir))
    fed: dict[str, Any] = OmegaConf.to_container(cfg.federation, resolve=True)  # type: ignore[assignment]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"eval-{run_dir.name}")
    job_dir = run_dir / "slurm"
    jobs = [FederationJob("superlink", None, render_superlink(
        launcher, fed, run_dir=run_dir, workdir=workdir, job_name=f"{base}-superlink", finish=finish),
        job_dir / "evaluate_superlink.sbatch")]
    for site, dataset in datasets.items():
        jobs.append(FederationJob("supernode", site, render_supernode(
            launcher, fed, site=site, dataset_dir=dataset, run_dir=run_dir, workdir=workdir,
            job_name=f"{base}-site-{site}"), job_dir / f"evaluate_supernode_{site}.sbatch"))
    return jobs


def submit(cfg: DictConfig, jobs: Sequence[FederationJob], *, dry_run: bool = False,
           sbatch_exe: str = "sbatch", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Write the coordinator's config and the scripts, then ``sbatch`` them; ``role[:site] -> job id``.

    A stale ``superlink.address`` from an earlier SuperLink job is removed first, so no
    SuperNode dials a SuperLink that is gone.
    """
    run_dir = Path(str(cfg.run_dir))
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    write_server_config(cfg, run_dir)
    (run_dir / ADDRESS_FILE).unlink(missing_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        atomic_write_text(job.script_path, job.script)
        os.chmod(job.script_path, 0o755)
        key = job.role if job.site is None else f"{job.role}:{job.site}"
        ids[key] = "dry-run" if dry_run else sbatch(job.script_path, sbatch_exe, env)
        log.info("%s %s: %s", "rendered" if dry_run else f"submitted job {ids[key]}", key, job.script_path)
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imaging.launch.federate [--dry-run] OVERRIDES...``: print ``role job-id script`` lines."""
    args = list(sys.argv[1:] if argv is None else argv)
    dry = "--dry-run" in args
    cfg, jobs = prepare([a for a in args if a != "--dry-run"])
    launcher_ov = split_overrides(args)[0]
    exe = str(compose("submit", launcher_ov).launcher.get("sbatch") or "sbatch")
    ids = submit(cfg, jobs, dry_run=dry, sbatch_exe=exe)
    for job, (key, job_id) in zip(jobs, ids.items(), strict=True):
        print(f"{key}\t{job_id}\t{job.script_path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
