"""``imaging submit train|infer|ingest OVERRIDES...``: compose, render, ``sbatch``.

The job's own config (``imaging/conf/train.yaml`` ...) is composed with the job's
overrides to find where the job writes (training: the deterministic run dir
``run_dir``; inference/ingest: ``output_dir``). The launcher is composed
separately from ``imaging/conf/submit.yaml`` with the ``launcher*`` overrides, so the
command inside the job carries exactly the user's overrides plus the few this
module pins (``paths.root_dir`` so the job resolves the same directories,
``tracking.uri`` when the launcher names a server, ``trainer.resume=auto``).
An inference job's ``models:/NAME@ALIAS`` is pinned to the version the alias names
at submission (:func:`pin_model`): every task of the array runs that version.

Per submission, ``<job dir>/<kind>.sbatch`` holds the script, ``slurm-*.out``
the logs and ``job-<id>.json`` a record (also copied to
``launcher.jobs_index_dir/<id>.json``) that ``imaging status`` reads.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imaging.errors import UsageError
from imaging.fsutil import atomic_write_json, atomic_write_text
from imaging.launch.render import JOB_KINDS, JobSpec, LauncherConfigError, render
from imaging.resources import CONF_DIR
from imaging.tracking.store import embedded_uri, tracking_uri

log = logging.getLogger(__name__)

_LAUNCHER_RE = re.compile(r"^[+~]*launcher([.=@]|$)")


class SubmitError(RuntimeError):
    """``sbatch`` refused the job (its message is included)."""


@dataclass
class Prepared:
    """A rendered job, not yet submitted."""

    kind: str
    script: str
    script_path: Path
    spec: JobSpec
    launcher: dict[str, Any]
    tracking: dict[str, str | None] = field(default_factory=dict)
    cfg: DictConfig | None = None  # the job's composed config (checked before sbatch)
    model: dict[str, str] = field(default_factory=dict)  # infer: {"uri", "pinned_from"} once pinned

    @property
    def log_pattern(self) -> str:
        name = "slurm-%A_%a.out" if self.kind == "infer" else "slurm-%j.out"
        return str(self.spec.job_dir / name)


@dataclass
class Submission:
    """What ``imaging submit`` prints and ``imaging status`` reads back (``job-<id>.json``)."""

    job_id: str
    kind: str
    script: str
    log: str
    run_dir: str
    job_dir: str
    overrides: list[str]
    tracking_uri: str | None
    experiment_name: str | None
    run_name: str | None
    run_id_file: str | None
    array: str | None
    submitted_at: str
    dependency: str | None = None
    model_uri: str | None = None  # infer: the model every task runs (models:/NAME/VERSION once pinned)
    model_pinned_from: str | None = None  # infer: the models:/NAME@ALIAS it was resolved from at submission

    def log_for(self, task: int | None = None) -> str:
        """The log path with Slurm's ``%j`` / ``%A_%a`` patterns filled in."""
        text = self.log.replace("%j", self.job_id).replace("%A", self.job_id)
        return text.replace("%a", "*" if task is None else str(task))


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(launcher overrides, job overrides)``: ``launcher=slurm``/``launcher.x=y`` go to the launcher."""
    launcher = [o for o in overrides if _LAUNCHER_RE.match(o)]
    job = [o for o in overrides if not _LAUNCHER_RE.match(o)]
    return launcher, job


def _has(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def compose(config_name: str, overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``<config_name>.yaml`` of the shipped configs (and the site's) as the app would
    (``hydra:`` resolvers included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from imaging.resources import searchpath_override

    GlobalHydra.instance().clear()
    site = [] if any(o.lstrip("+").startswith("hydra.searchpath") for o in overrides) else searchpath_override()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=[*overrides, *site], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # `${hydra:runtime.cwd}` in paths/ resolves as in the app
        OmegaConf.set_struct(cfg, False)
        del cfg["hydra"]  # its run/sweep dirs need a job number that only a real launch has
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    GlobalHydra.instance().clear()
    assert isinstance(resolved, DictConfig)
    return resolved


def _tracking(cfg: DictConfig, kind: str, launcher: Mapping[str, Any]) -> dict[str, str | None]:
    if "tracking" not in cfg:
        return {"uri": None, "experiment_name": None, "run_name": None}
    uri = launcher.get("mlflow_tracking_uri") or cfg.tracking.get("uri")
    if not uri and "paths" in cfg:
        uri = embedded_uri(str(cfg.paths.mlflow_db))
    return {"uri": str(uri) if uri else None, "experiment_name": str(cfg.tracking.get("experiment_name")),
            "run_name": str(cfg.tracking.get("run_name")) if kind == "train" else None}


def prepare(kind: str, overrides: Sequence[str], *, cwd: Path | None = None,
            conf_dir: Path = CONF_DIR) -> Prepared:
    """Compose configs and render the script for one job (nothing written yet).

    Raises
    ------
    LauncherConfigError
        Unknown job kind, ``launcher=local`` (nothing to submit) or a bad launcher value.
    hydra.errors.HydraException
        The overrides do not compose (typo in a key or group).
    """
    if kind not in JOB_KINDS:
        raise LauncherConfigError(f"imaging submit: unknown job '{kind}' (expected {' | '.join(JOB_KINDS)})")
    cwd = (cwd or Path.cwd()).resolve()
    launcher_ov, job_ov = split_overrides(overrides)
    submit_cfg = compose("submit", launcher_ov, conf_dir)
    launcher: dict[str, Any] = OmegaConf.to_container(submit_cfg.launcher, resolve=True)  # type: ignore[assignment]
    if launcher.get("name") != "slurm":
        raise LauncherConfigError(
            f"launcher={launcher.get('name')}: `imaging submit` needs a Slurm launcher "
            "(launcher=slurm or a cluster profile such as launcher=cluster_h100); run `imaging "
            f"{kind} ...` directly to run here")
    if kind == "infer":
        # `imaging infer` accepts `model=models:/...` for `model_uri=` (imaging/conf/model/ is a group): same here.
        job_ov = [("model_uri=" + o[len("model="):]) if o.startswith("model=models:/") else o for o in job_ov]
    cfg = compose(kind, job_ov, conf_dir)
    job_ov = list(job_ov)
    # The job records the launcher it really ran under (launcher.name in its MLflow run),
    # not the `local` default of its own config; the other launcher values stay here.
    if "launcher" in cfg and not _has(job_ov, "launcher"):
        choice = next((o.split("=", 1)[1] for o in launcher_ov if o.lstrip("+~").startswith("launcher=")),
                      "slurm")
        job_ov.append(f"launcher={choice}")
    # Pin what the job must resolve exactly as here, whatever its cwd or environment.
    if not _has(job_ov, "paths.root_dir") and "paths" in cfg:
        job_ov.append(f"paths.root_dir={cfg.paths.root_dir}")
    if launcher.get("mlflow_tracking_uri") and not _has(job_ov, "tracking.uri") and "tracking" in cfg:
        job_ov.append(f"tracking.uri={launcher['mlflow_tracking_uri']}")
    if kind == "train" and not _has(job_ov, "trainer.resume"):
        job_ov.append("trainer.resume=auto")  # a requeued job must continue, never restart
    if kind == "train":
        run_dir = Path(str(cfg.run_dir))
        default_name = f"train-{cfg.tracking.experiment_name}-{cfg.tracking.run_name}"
    else:
        run_dir = Path(str(cfg.output_dir))
        default_name = f"{kind}-{run_dir.name}"
    run_dir = run_dir if run_dir.is_absolute() else cwd / run_dir
    job_dir = run_dir / "slurm"
    name = launcher.get("job_name") or re.sub(r"[^A-Za-z0-9_.-]+", "_", default_name)
    spec = JobSpec(kind=kind, overrides=job_ov, job_dir=job_dir, workdir=cwd, job_name=str(name),
                   run_dir=run_dir)
    script = render(launcher, spec)
    return Prepared(kind=kind, script=script, script_path=job_dir / f"{kind}.sbatch", spec=spec,
                    launcher=launcher, tracking=_tracking(cfg, kind, launcher), cfg=cfg)


def _registry_uri(prep: Prepared) -> str:
    """The store the job will load its model from: as the job resolves it (``tracking.uri``,
    then ``$MLFLOW_TRACKING_URI`` inherited through sbatch, then the embedded store)."""
    assert prep.cfg is not None
    explicit = prep.launcher.get("mlflow_tracking_uri") or prep.cfg.tracking.get("uri")
    return tracking_uri(str(explicit) if explicit else None, str(prep.cfg.paths.mlflow_db))


def pin_model(prep: Prepared, produced: Collection[str] = ()) -> str | None:
    """Resolve an inference job's ``models:/NAME@ALIAS`` once, now, and render ``models:/NAME/VERSION``.

    Each array task would otherwise resolve the alias when it starts: a promotion while the
    array waits in the queue would put two versions into one report. ``prep`` is updated in
    place (overrides, script, ``cfg.model_uri``, ``model``); returns the version (None when
    there is nothing to pin: another job kind, a version already, or a model an earlier job of
    the chain registers, named in ``produced``).

    Raises
    ------
    UsageError
        The registry has no such model or alias, or cannot be reached (names the key and the store).
    """
    if prep.kind != "infer" or prep.cfg is None or "model_uri" in produced:
        return None
    from imaging.tracking.registry import parse_model_uri

    uri = str(prep.cfg.get("model_uri") or "")
    name, alias, version = parse_model_uri(uri) if uri.startswith("models:/") else (uri, None, None)
    if alias is None:
        prep.model = {"uri": uri}
        return version
    mv = _resolve_alias(prep, uri, name, alias)
    pinned = f"models:/{name}/{mv}"
    overrides = [o for o in prep.spec.overrides if o.lstrip("+~").split("=", 1)[0] not in ("model_uri", "model")]
    prep.spec = replace(prep.spec, overrides=[*overrides, f"model_uri={pinned}"])
    prep.script = render(prep.launcher, prep.spec)
    prep.cfg.model_uri = pinned
    prep.model = {"uri": pinned, "pinned_from": uri}
    log.info("%s is version %s now: the job runs %s", uri, mv, pinned)
    return mv


def _resolve_alias(prep: Prepared, uri: str, name: str, alias: str) -> str:
    from mlflow.exceptions import MlflowException

    from imaging.tracking.connect import load_token
    from imaging.tracking.store import client_for

    store = _registry_uri(prep)
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).is_file():
        # MLflow would create an empty store here and then not find the model.
        raise UsageError(f"model={uri}: no MLflow store at {store} to resolve '@{alias}' in "
                         "(`imaging where` shows the store; set tracking.uri)")
    assert prep.cfg is not None
    load_token(prep.cfg.tracking)
    try:
        return str(client_for(store).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"model={uri}: {first} (store: {store}; `imaging model list` shows its models)") from None


def array_model_uri(uri: str, output_dir: Path, store: str, env: Mapping[str, str] | None = None) -> str:
    """In a Slurm array task: ``models:/NAME@ALIAS`` -> the version the array's first task resolved.

    For the arrays :func:`pin_model` could not pin at submission (``imaging submit pipeline``:
    the training job registers the model later; a hand-edited script): the first task to
    start resolves the alias and records it in ``<output_dir>/work/model-pin.<array job id>.json``;
    every other task, and a requeued one, reads it. Outside an array, or for a version, ``uri``
    is returned as is.

    Raises:
        mlflow.exceptions.MlflowException: unknown model or alias.
    """
    from imaging.tracking.registry import parse_model_uri

    job = (os.environ if env is None else env).get("SLURM_ARRAY_JOB_ID")
    name, alias, _ = parse_model_uri(uri)
    if not job or alias is None:
        return uri
    path = output_dir / "work" / f"model-pin.{job}.json"
    if not path.is_file():
        from imaging.tracking.store import client_for

        pinned = f"models:/{name}/{client_for(store).get_model_version_by_alias(name, alias).version}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"from": uri, "uri": pinned}))
        with contextlib.suppress(FileExistsError):  # two tasks at once: the first link wins, both read it
            os.link(tmp, path)
        tmp.unlink()
    record = json.loads(path.read_text())
    if record.get("from") != uri:
        return uri  # another model in the same folder and array: nothing pinned for this one
    log.info("%s pinned for array job %s: %s", uri, job, record["uri"])
    return str(record["uri"])


def sbatch(script_path: Path, sbatch_exe: str = "sbatch", env: Mapping[str, str] | None = None,
           dependency: str | None = None) -> str:
    """Submit with ``sbatch --parsable``; return the job id.

    ``dependency`` (e.g. ``afterok:123``) holds the job until that one succeeded; with
    ``--kill-on-invalid-dep=yes`` Slurm cancels it when the dependency can never be met
    (the earlier job failed) instead of leaving it pending forever.

    Raises
    ------
    SubmitError
        sbatch is missing or refused the script (its stderr is in the message).
    """
    try:
        deps = [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"] if dependency else []
        proc = subprocess.run([sbatch_exe, "--parsable", *deps, str(script_path)], capture_output=True, text=True,
                              env=None if env is None else dict(env), timeout=120)
    except OSError as exc:
        raise SubmitError(f"cannot run '{sbatch_exe}': {exc} (is this a Slurm login node?)") from exc
    if proc.returncode != 0:
        raise SubmitError(f"sbatch {script_path} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def submit(prep: Prepared, *, dry_run: bool = False, env: Mapping[str, str] | None = None,
           dependency: str | None = None) -> Submission:
    """Write the script into the job dir, submit it (unless ``dry_run``) and record the job."""
    prep.spec.job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prep.script_path, prep.script)
    os.chmod(prep.script_path, 0o755)  # no secret in it (launcher.secret_files are read at run time)
    job_id = "dry-run" if dry_run else sbatch(prep.script_path, str(prep.launcher.get("sbatch") or "sbatch"), env,
                                              dependency)
    run_id_file = prep.spec.run_dir / "mlflow_run_id" if prep.kind == "train" else None
    sub = Submission(
        job_id=job_id, kind=prep.kind, script=str(prep.script_path), log=prep.log_pattern,
        run_dir=str(prep.spec.run_dir), job_dir=str(prep.spec.job_dir), overrides=list(prep.spec.overrides),
        tracking_uri=prep.tracking.get("uri"), experiment_name=prep.tracking.get("experiment_name"),
        run_name=prep.tracking.get("run_name"), run_id_file=str(run_id_file) if run_id_file else None,
        array=None, submitted_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), dependency=dependency,
        model_uri=prep.model.get("uri"), model_pinned_from=prep.model.get("pinned_from"),
    )
    if prep.kind == "infer":
        from imaging.launch.render import array_spec

        sub.array = array_spec(prep.launcher)
    if not dry_run:
        atomic_write_json(prep.spec.job_dir / f"job-{job_id}.json", asdict(sub))
        index = prep.launcher.get("jobs_index_dir")
        if index:
            Path(index).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(index) / f"{job_id}.json", asdict(sub))
    log.info("submitted %s job %s: %s", prep.kind, job_id, prep.script_path)
    return sub


def load_submission(job_id: str, *, index_dir: Path | None = None, job_dir: Path | None = None) -> Submission | None:
    """The record ``submit`` wrote for ``job_id`` (array task ids ``123_4`` map to ``123``)."""
    base = job_id.split("_")[0].split(".")[0]
    for folder in (job_dir, index_dir):
        if folder is None:
            continue
        path = Path(folder) / (f"job-{base}.json" if folder == job_dir else f"{base}.json")
        if path.is_file():
            return Submission(**json.loads(path.read_text()))
    return None
