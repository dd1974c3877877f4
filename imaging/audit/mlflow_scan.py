"""Audit an MLflow tracking store: experiments, runs, models and every artifact.

Kept apart from the file scanners so that ``imaging.audit`` never imports mlflow
unless a store is audited. Covered: experiment names and tags; run names, params
(keys and values), tags, metric names, dataset inputs; every artifact file
(downloaded one at a time into a temporary folder and scanned like any file);
registered models and versions (names, descriptions, aliases, tags); logged models
(names, params, tags, artifacts). Run and experiment descriptions are the
``mlflow.note.content`` tag, so they are read with the tags.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from imaging.audit.files import scan_file
from imaging.audit.needles import Hit, Needles, as_needles, mask

log = logging.getLogger(__name__)
PAGE = 500


def scan_mlflow(uri: str, needles: Needles | Iterable[str], *, artifacts: bool = True) -> list[Hit]:
    """Scan the MLflow store at ``uri`` (``sqlite:///...``, ``http://...``, a folder).

    Raises:
        mlflow.exceptions.MlflowException: the store cannot be reached or read.
    """
    needles = as_needles(needles)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    hits: list[Hit] = []
    with tempfile.TemporaryDirectory(prefix="imaging-audit-") as tmp:
        for exp in client.search_experiments(view_type=ViewType.ALL):
            where = f"mlflow:experiment {exp.experiment_id}"
            hits += _texts(
                needles, where, [("experiment name", exp.name)] + _kv("experiment tag", exp.tags)
            )
            for run in _runs(client, exp.experiment_id):
                hits += _run(client, run, needles, Path(tmp), artifacts)
            hits += _logged_models(client, exp.experiment_id, needles, Path(tmp), artifacts)
        hits += _registry(client, needles)
    return hits


def _kv(kind: str, mapping: Mapping[str, object] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in (mapping or {}).items():
        out += [(f"{kind} key", str(key)), (f"{kind} {key}", str(value))]
    return out


def _texts(needles: Needles, where: str, items: list[tuple[str, str]]) -> list[Hit]:
    return [
        Hit(where, field, rule, mask(found, rule))
        for field, text in items
        for rule, found in needles.find(text)
    ]


def _runs(client: MlflowClient, exp_id: str) -> Iterator[object]:
    token = None
    while True:
        page = client.search_runs(
            [exp_id], run_view_type=ViewType.ALL, max_results=PAGE, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def _run(
    client: MlflowClient, run: object, needles: Needles, tmp: Path, artifacts: bool
) -> list[Hit]:
    info, data = run.info, run.data  # type: ignore[attr-defined]
    where = f"mlflow:run {info.run_id}"
    items = [("run name", info.run_name or "")]
    items += _kv("param", data.params) + _kv("tag", data.tags)
    items += [("metric name", key) for key in data.metrics]
    for dataset_input in getattr(getattr(run, "inputs", None), "dataset_inputs", []) or []:
        ds = dataset_input.dataset
        items += [("dataset name", ds.name or ""), ("dataset source", ds.source or "")]
    hits = _texts(needles, where, items)
    if artifacts:
        hits += _artifacts(client, info.run_id, "", needles, where, tmp)
    return hits


def _artifacts(
    client: MlflowClient, run_id: str, path: str, needles: Needles, where: str, tmp: Path
) -> list[Hit]:
    hits: list[Hit] = []
    for item in client.list_artifacts(run_id, path or None):
        hits += _texts(needles, where, [("artifact path", item.path)])
        if item.is_dir:
            hits += _artifacts(client, run_id, item.path, needles, where, tmp)
            continue
        local = Path(client.download_artifacts(run_id, item.path, str(tmp)))
        try:
            hits += list(scan_file(local, needles, where=f"{where} artifact {item.path}"))
        finally:
            local.unlink(missing_ok=True)
    return hits


def _logged_models(
    client: MlflowClient, exp_id: str, needles: Needles, tmp: Path, artifacts: bool
) -> list[Hit]:
    search = getattr(client, "search_logged_models", None)
    if search is None:
        return []
    hits: list[Hit] = []
    for model in search(experiment_ids=[exp_id]):
        where = f"mlflow:logged-model {model.model_id}"
        items = (
            [("model name", model.name or "")] + _kv("param", model.params) + _kv("tag", model.tags)
        )
        hits += _texts(needles, where, items)
        if artifacts and model.artifact_location:
            import mlflow.artifacts

            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=model.artifact_location, dst_path=str(tmp)
                )
            )
            files = (
                [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
            )
            for f in files:
                if _own_source(f):
                    continue
                hits += list(
                    scan_file(f, needles, where=f"{where} artifact {f.relative_to(local.parent)}")
                )
    return hits


def _own_source(path: Path) -> bool:
    """A registered model carries a copy of this package's code (``code_paths``): a file
    byte-identical to our own installed source is code, not data (the audit and synth
    modules name the canary token); anything else in the snapshot is scanned."""
    parts = path.parts
    if "imaging" not in parts or path.suffix != ".py":
        return False
    rel = Path(*parts[len(parts) - parts[::-1].index("imaging"):])
    ours = Path(__file__).resolve().parents[1] / rel
    return ours.is_file() and ours.read_bytes() == path.read_bytes()


def _registry(client: MlflowClient, needles: Needles) -> list[Hit]:
    hits: list[Hit] = []
    for model in client.search_registered_models():
        where = f"mlflow:registered-model {model.name}"
        items = [("name", model.name), ("description", model.description or "")] + _kv(
            "tag", model.tags
        )
        items += [("alias", str(alias)) for alias in (getattr(model, "aliases", None) or {})]
        hits += _texts(needles, where, items)
        for version in client.search_model_versions(f"name='{model.name}'"):
            items = [("description", version.description or ""), ("source", version.source or "")]
            hits += _texts(needles, f"{where} v{version.version}", items + _kv("tag", version.tags))
    return hits
