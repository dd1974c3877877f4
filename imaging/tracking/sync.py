"""Upload offline MLflow file stores (``<run_dir>/mlflow-offline/*``) into a tracking server.

MLflow has no tool that copies runs between stores (``mlflow migrate-filestore``
converts a whole file store into a *new* database, not into a live server), so
this walks the offline store with :class:`mlflow.MlflowClient` and replays it.
Idempotent: each uploaded run carries the tag ``imaging.offline_run_id``; a
later sync finds it and adds only what is missing (metric points compared by
step, timestamp and value; params; tags; dataset inputs; artifact files by
path). A registered model version is re-registered from the offline version's
bundle into the synced run, with its aliases and tags, once.

One training, one run: a training's run dir keeps a ledger (:data:`RUNS_FILE`) of
its run in each store it touched (the server, its offline store). Offline runs of a
training are merged into the server run the ledger names (or into the first one
uploaded), so a job that went online -> offline (server down) -> online (requeued)
is one server run holding every epoch once, and its model version points at it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from imaging.errors import UsageError
from imaging.fsutil import atomic_write_text
from imaging.tracking.connect import OFFLINE_DIR, file_store_uri, load_token
from imaging.tracking.summary import NOTE_TAG

log = logging.getLogger(__name__)

OFFLINE_RUN_TAG = "imaging.offline_run_id"
RUNS_FILE = "mlflow_runs.json"  # in a training's run dir: store key -> this training's run id there
BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch


@dataclass
class SyncReport:
    runs_created: int = 0
    runs_existing: int = 0
    metrics_added: int = 0
    params_added: int = 0
    artifacts_added: int = 0
    versions_created: int = 0
    run_map: dict[str, str] = field(default_factory=dict)  # offline run id -> server run id

    def added(self) -> int:
        return (self.runs_created + self.metrics_added + self.params_added + self.artifacts_added
                + self.versions_created)


def find_stores(run_dir: Path) -> list[Path]:
    """The offline stores under ``run_dir`` (``.../mlflow-offline/<name>`` folders).

    Raises:
        UsageError: ``run_dir`` does not exist or holds no offline store (names it): a bad
            argument, nothing was done (exit 2), not an internal error.
    """
    if not run_dir.is_dir():
        raise UsageError(f"run dir '{run_dir}': no such folder")
    stores = sorted(p for d in [run_dir, *run_dir.rglob(OFFLINE_DIR)] if d.name == OFFLINE_DIR
                    for p in d.iterdir() if p.is_dir())
    if not stores:
        raise UsageError(f"run dir '{run_dir}': no offline MLflow store ({OFFLINE_DIR}/<store>) under it; "
                         "nothing to sync (the job logged to the server directly, or this is not its run dir)")
    return stores


def server_of(store: Path) -> str | None:
    path = store / "SERVER"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def store_key(run_dir: Path, uri: str) -> str:
    """The ledger's key of a store: ``offline:<path under run_dir>`` for the run dir's own offline
    stores (the run dir may move), else the URI itself (a server, a database)."""
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(uri).path)).resolve()
        if path.is_relative_to(run_dir.resolve()):
            return f"offline:{path.relative_to(run_dir.resolve()).as_posix()}"
    return uri.rstrip("/")


def read_runs(run_dir: Path) -> dict[str, str]:
    """The ledger of ``run_dir``: store key -> this training's run id in that store ({} when none)."""
    path = run_dir / RUNS_FILE
    if not path.is_file():
        return {}
    return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def forget_runs(run_dir: Path) -> None:
    """A new training in ``run_dir`` (``trainer.resume=never``, other data): it continues no earlier run."""
    (run_dir / RUNS_FILE).unlink(missing_ok=True)


def record_run(run_dir: Path, uri: str, run_id: str) -> None:
    """Note that this training's run in store ``uri`` is ``run_id`` (atomic; other stores kept)."""
    runs = read_runs(run_dir)
    runs[store_key(run_dir, uri)] = run_id
    atomic_write_text(run_dir / RUNS_FILE, json.dumps(runs, indent=1, sort_keys=True) + "\n")


def _existing(dst: MlflowClient, run_id: str | None) -> Run | None:
    if not run_id:
        return None
    try:
        return dst.get_run(run_id)
    except MlflowException:
        return None  # deleted on the server, or another server's id: upload as a run of its own


def _sync_run(src: MlflowClient, dst: MlflowClient, run_id: str, dst_exp: str, report: SyncReport,
              into: str | None = None) -> str:
    run = src.get_run(run_id)
    found = dst.search_runs([dst_exp], f"tags.`{OFFLINE_RUN_TAG}` = '{run_id}'", run_view_type=ViewType.ALL)
    continued = None if found else _existing(dst, into)
    if found or continued is not None:
        # Already uploaded, or the offline segment of a training whose server run exists: replay into it.
        target = found[0] if found else continued
        assert target is not None
        report.runs_existing += 1
    else:
        target = dst.create_run(dst_exp, start_time=run.info.start_time, run_name=run.info.run_name,
                                tags={OFFLINE_RUN_TAG: run_id})
        report.runs_created += 1
    tid = target.info.run_id
    have = dst.get_run(tid)
    params = [Param(k, v) for k, v in run.data.params.items() if k not in have.data.params]
    tags = [RunTag(k, v) for k, v in run.data.tags.items()
            if k != NOTE_TAG and not k.startswith("mlflow.log-model") and have.data.tags.get(k) != v]
    metrics: list[Metric] = []
    for key in run.data.metrics:
        known = {(m.step, m.timestamp, m.value) for m in dst.get_metric_history(tid, key)}
        metrics += [Metric(key, m.value, m.timestamp, m.step) for m in src.get_metric_history(run_id, key)
                    if (m.step, m.timestamp, m.value) not in known]
    for start in range(0, len(params), 100):
        dst.log_batch(tid, params=params[start:start + 100])
    for start in range(0, len(tags), 100):
        dst.log_batch(tid, tags=tags[start:start + 100])
    for start in range(0, len(metrics), BATCH):
        dst.log_batch(tid, metrics=metrics[start:start + BATCH])
    report.params_added += len(params)
    report.metrics_added += len(metrics)
    src_inputs = list(run.inputs.dataset_inputs) if run.inputs is not None else []
    if src_inputs and not (have.inputs is not None and have.inputs.dataset_inputs):
        dst.log_inputs(tid, datasets=src_inputs)
    report.artifacts_added += _sync_artifacts(src, dst, run_id, tid)
    if have.data.tags.get(OFFLINE_RUN_TAG) is None:
        dst.set_tag(tid, OFFLINE_RUN_TAG, run_id)  # a later sync finds the run it went into
    # The status of the segment that ended last (a merged run must not turn FINISHED back to KILLED).
    later = (run.info.end_time or 0) >= (have.info.end_time or 0)
    if run.info.status != "RUNNING" and have.info.status != run.info.status and later:
        dst.set_terminated(tid, status=run.info.status, end_time=run.info.end_time)
    report.run_map[run_id] = tid
    return tid


def _files(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def _sync_artifacts(src: MlflowClient, dst: MlflowClient, run_id: str, tid: str) -> int:
    missing = sorted(_files(src, run_id) - _files(dst, tid))
    if not missing:
        return 0
    with tempfile.TemporaryDirectory(prefix="imaging-sync-") as tmp:
        for rel in missing:
            local = src.download_artifacts(run_id, rel, tmp)
            parent = rel.rsplit("/", 1)[0] if "/" in rel else None
            dst.log_artifact(tid, local, parent)
    return len(missing)


def _sync_versions(src: MlflowClient, dst_uri: str, src_uri: str, report: SyncReport) -> None:
    from imaging.tracking.registry import client_for, load_bundle, register_model
    from imaging.tracking.store import activate, reopen_run
    from imaging.tracking.summary import describe_model_version

    dst = client_for(dst_uri)
    for model in src.search_registered_models():
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        for mv in sorted(src.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)):
            target_run = report.run_map.get(str(mv.run_id))
            if target_run is None:
                continue
            if dst.search_model_versions(f"name='{model.name}' and run_id='{target_run}'"):
                continue
            bundle = load_bundle(f"models:/{model.name}/{mv.version}", tracking_uri=src_uri)
            aliases = sorted(aliases_of.get(str(mv.version), [])) or ["candidate"]
            tags = {k: v for k, v in (mv.tags or {}).items() if k not in ("task", "labels")}
            activate(dst_uri)  # not via the environment: see imaging.tracking.store.activate
            target = dst.get_run(target_run)
            status = target.info.status
            with reopen_run(target_run, target.info.experiment_id):
                info = register_model(bundle.network, network_config=bundle.network_config,
                                      preprocessing=bundle.preprocessing, labels=bundle.labels, task=bundle.task,
                                      name=model.name, alias=aliases[0], tags=tags)
            dst.set_terminated(target_run, status=status)
            for alias in aliases[1:]:
                dst.set_registered_model_alias(model.name, alias, info["version"])
            describe_model_version(model.name, info["version"], dst)
            report.versions_created += 1
            log.info("registered %s v%s from offline v%s", model.name, info["version"], mv.version)


def sync_store(store: Path, target_uri: str, into: str | None = None,
               members: Collection[str] = ()) -> SyncReport:
    """Upload one offline store into ``target_uri``; returns what was added.

    Args:
        into: the server run that the ``members`` continue (a training's, from its ledger):
            they are replayed into it when it exists there; unknown, the first member
            uploaded becomes it.
        members: offline run ids that are segments of that one training; other runs of the
            store are uploaded as runs of their own.

    Raises:
        mlflow.exceptions.MlflowException: the server refused a write (a rerun resumes).
    """
    from imaging.tracking.runs import ensure_experiment
    from imaging.tracking.summary import describe_run

    src_uri = file_store_uri(store)
    src = MlflowClient(tracking_uri=src_uri, registry_uri=src_uri)
    dst = MlflowClient(tracking_uri=target_uri, registry_uri=target_uri)
    report = SyncReport()
    for exp in src.search_experiments(view_type=ViewType.ALL):
        runs = src.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
        if not runs:
            continue
        dst_exp = ensure_experiment(dst, exp.name)
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            ours = run.info.run_id in members
            tid = _sync_run(src, dst, run.info.run_id, dst_exp, report, into if ours else None)
            into = into or (tid if ours else None)
    _sync_versions(src, target_uri, src_uri, report)
    if report.added():
        for tid in report.run_map.values():  # links point at the server's ids now
            try:
                describe_run(tid, dst)
            except Exception as exc:  # noqa: BLE001 - a description never fails a sync
                log.warning("could not describe run %s: %s", tid, exc)
    return report


def sync_run_dir(run_dir: Path, target_uri: str | None = None, tracking: dict | None = None) -> list[SyncReport]:
    """Sync every offline store under ``run_dir`` into ``target_uri`` (default: the server it was meant for).

    Raises:
        UsageError: no run dir / offline store, or no target server given nor recorded (checked
            for every store before the first upload, so nothing is half done).
    """
    load_token(tracking or {})
    stores = find_stores(run_dir)
    targets = [target_uri or server_of(store) for store in stores]
    for store, target in zip(stores, targets, strict=True):
        if not target:
            raise UsageError(f"offline store '{store}' records no server: pass --tracking-uri URL "
                             "(or set MLFLOW_TRACKING_URI)")
    return [_sync_training_store(run_dir, store, str(target)) for store, target in zip(stores, targets, strict=True)]


def _sync_training_store(run_dir: Path, store: Path, target: str) -> SyncReport:
    """Sync ``store``; in a training's run dir (a ledger), into the training's one server run."""
    runs = read_runs(run_dir)
    if not runs:
        return sync_store(store, target)
    key = store_key(run_dir, target)
    offline_run = runs.get(store_key(run_dir, file_store_uri(store)))
    report = sync_store(store, target, into=runs.get(key), members=[offline_run] if offline_run else [])
    server_run = report.run_map.get(offline_run or "") or runs.get(key)
    if server_run and server_run != runs.get(key):
        record_run(run_dir, target, server_run)  # the next online segment continues this run
    return report


def rejoin(run_dir: Path, target_uri: str) -> str | None:
    """A training coming back online: upload its offline segments into its server run first.

    Returns:
        The server run that holds the training so far (the one to continue), or None when
        neither the ledger nor an offline store names one.
    """
    stores = sorted(p for d in run_dir.rglob(OFFLINE_DIR) if d.is_dir() for p in d.iterdir() if p.is_dir())
    for store in stores:
        report = _sync_training_store(run_dir, store, target_uri)
        log.info("uploaded the offline segment(s) of this training: %d metric points, %d artifacts",
                 report.metrics_added, report.artifacts_added)
    return read_runs(run_dir).get(store_key(run_dir, target_uri))
