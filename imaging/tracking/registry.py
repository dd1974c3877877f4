"""Model registry: register a trained network, load it back, move aliases.

A registered version is an MLflow pyfunc model logged *from code*
(:mod:`imaging.models.pyfunc_model`) with two plain artifacts:
``weights.safetensors`` (the state dict) and ``bundle.json`` (network config,
preprocessing, label names, task, input signature). Nothing is pickled:
loading rebuilds the network with :func:`imaging.models.build_network` and
loads the tensors, so no code from the store runs. Aliases are MLflow 3 aliases
(``candidate`` on registration; ``imaging model promote`` sets others).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from safetensors.torch import load_file, save_file

from imaging.models.registry import build_network
from imaging.records import Preprocessing
from imaging.tracking.store import activate, client_for

log = logging.getLogger(__name__)

BUNDLE_JSON = "bundle.json"
WEIGHTS = "weights.safetensors"
BUNDLE_FORMAT = 1
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class ModelBundle:
    """Everything inference needs, loaded from ``models:/name@alias``."""

    network: torch.nn.Module
    network_config: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: dict[int, str]
    task: str
    name: str
    version: str
    run_id: str | None
    selection: dict[str, Any] | None = None  # the series selection rule stored with the model (issue 19)


# What the pyfunc imports (imaging.models.pyfunc_model -> tracking.registry, engine.predict,
# data.transforms); the imaging package itself travels as code_paths.
# mlflow-skinny: loading a pyfunc needs no tracking server, UI or SQL store (but pandas,
# which skinny leaves out: checked by loading the model in a fresh venv).
PYFUNC_DISTS = ("torch", "monai", "safetensors", "numpy", "pandas", "mlflow-skinny", "nibabel", "scipy")


def _requirements() -> list[str]:
    """Pinned requirements without local version labels: ``torch==2.13.0``, not
    ``torch==2.13.0+cpu`` (no public index serves a ``+cpu`` build; the CUDA or CPU
    build is the installing site's choice)."""
    reqs = []
    for dist in PYFUNC_DISTS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+', 1)[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def write_bundle(directory: Path, network: torch.nn.Module, network_config: dict[str, Any],
                 preprocessing: dict[str, Any], labels: dict[int, str], task: str,
                 selection: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``weights.safetensors`` and ``bundle.json`` into ``directory``.

    ``selection``: the series selection rule inference applies (imaging.selection), if any.
    """
    stored = Preprocessing.from_dict(preprocessing).to_dict()  # checked (names a missing key), with its version
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(weights))
    bundle = {
        "format": BUNDLE_FORMAT, "task": task, "network_config": network_config, "preprocessing": stored,
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "input": {"channels": int(network_config.get("in_channels", 1)), "roi_size": preprocessing["roi_size"],
                  "dtype": "float32", "layout": "NCXYZ (RAS after preprocessing)"},
    }
    if selection:
        bundle["selection"] = selection
    path = directory / BUNDLE_JSON
    path.write_text(json.dumps(bundle, indent=2, sort_keys=True), encoding="utf-8")
    return weights, path


def read_bundle_dir(directory: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network from a folder holding ``bundle.json`` and ``weights.safetensors``.

    Raises:
        FileNotFoundError: either file is missing (names the folder).
        ValueError: unknown bundle format; a ``preprocessing`` of an unknown version or
            without a required key (names the key).
    """
    bundle_path = next(directory.rglob(BUNDLE_JSON), None)
    weights_path = next(directory.rglob(WEIGHTS), None)
    if bundle_path is None or weights_path is None:
        raise FileNotFoundError(f"no {BUNDLE_JSON} / {WEIGHTS} under '{directory}'")
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"'{bundle_path}': bundle format {bundle.get('format')!r} is not {BUNDLE_FORMAT}")
    try:  # an older bundle (no version) is read as version 1; a newer one is refused by name
        bundle["preprocessing"] = Preprocessing.from_dict(bundle.get("preprocessing") or {}).to_dict()
    except ValueError as exc:
        raise ValueError(f"'{bundle_path}': {exc}") from exc
    network = build_network(bundle["network_config"])
    network.load_state_dict(load_file(str(weights_path)))
    network.eval()
    return network, bundle


def register_model(network: torch.nn.Module, *, network_config: dict[str, Any], preprocessing: dict[str, Any],
                   labels: dict[int, str], task: str, name: str, alias: str = "candidate",
                   tags: dict[str, str] | None = None, selection: dict[str, Any] | None = None,
                   series_rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log the model into the active MLflow run, register it and move ``alias`` by the policy
    of :func:`best_comparable_version`.

    Args:
        selection: ``{"monitor", "mode" (max|min), "value", "best_epoch", "split"}`` of the
            registered weights; stored as version tags and used by the alias policy.
            ``None``: the alias always moves to the new version.

    ``series_rule``: a validated series selection rule (imaging.selection), stored in
    ``bundle.json`` (key ``selection``) so that ``models:/name@alias`` brings it to ``imaging infer``.

    Returns:
        ``{"name", "version", "alias", "alias_version", "uri", "model_uri"}``: ``alias`` is
        ``None`` when it stayed on a better version (``alias_version``).
    """
    # The registry is the tracking store (as client_for below): a registry URI left by an
    # earlier run in this process must not receive this version.
    activate(mlflow.get_tracking_uri())
    roi = [int(s) for s in preprocessing["roi_size"]]
    channels = int(network_config.get("in_channels", 1))
    # Two input forms (imaging.models.pyfunc_model): raw NIfTI paths, or preprocessed
    # float32 volumes (N, channels, X, Y, Z). An MLflow input schema admits one form only
    # and would refuse paths, so the inputs are described in the metadata and bundle.json.
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1) if task == "segmentation" else (-1,),
                                   "labels")]),
    )
    inputs_doc = {"nifti": "a path, a list of paths or a DataFrame 'path' column -> labels on each file's grid",
                  "tensor": f"float32 (N, {channels}, X, Y, Z), preprocessed -> labels (N, X, Y, Z)"}
    with tempfile.TemporaryDirectory(prefix="imaging-bundle-") as tmp:
        weights, bundle = write_bundle(Path(tmp), network, network_config, preprocessing, labels, task, series_rule)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).resolve().parents[1] / "models" / "pyfunc_model.py"),
            artifacts={"weights": str(weights), "bundle": str(bundle)},
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the imaging package: loads anywhere
            pip_requirements=_requirements(), signature=signature, registered_model_name=name,
            await_registration_for=60, metadata={"task": task, "roi_size": roi, "bundle_format": BUNDLE_FORMAT, "inputs": inputs_doc},
        )
    version = str(info.registered_model_version)
    client = client_for(None)
    sel = {f"selection.{k}": str(v) for k, v in (selection or {}).items()}
    for key, value in {"task": task, "labels": json.dumps({str(k): v for k, v in labels.items()}),
                       **(tags or {}), **sel}.items():
        client.set_model_version_tag(name, version, key, value)
    target = best_comparable_version(client, name, version) if selection else version
    client.set_registered_model_alias(name, alias, target)
    if target == version:
        log.info("registered %s version %s as @%s", name, version, alias)
    else:
        log.info("registered %s version %s; @%s stays on version %s (better %s on the same data)", name, version,
                 alias, target, (selection or {}).get("monitor"))
    return {"name": name, "version": version, "alias": alias if target == version else None,
            "alias_version": target, "uri": f"models:/{name}/{version}", "model_uri": info.model_uri}


def best_comparable_version(client: MlflowClient, name: str, version: str) -> str:
    """The alias policy: the best version among those comparable with ``version``.

    Comparable versions were selected on the same monitored metric and mode, the
    same data (``catalog_sha256``) and the same split (``selection.split``: fold, folds, seed); among them (the new
    one included) the best ``selection.value`` wins, an earlier version on a tie.
    A new version with nothing comparable (other data, fold or metric) takes the
    alias. Every job computes this over all versions registered so far, so sweep
    jobs finishing in any order (or at once) leave the alias on the best one, not
    on whichever finished last.
    """
    versions = client.search_model_versions(f"name='{name}'")
    mine = next(v for v in versions if str(v.version) == str(version))
    keys = ("selection.monitor", "selection.mode", "selection.split", "catalog_sha256")
    same = [v for v in versions if all((v.tags or {}).get(k) == (mine.tags or {}).get(k) for k in keys)
            and _finite((v.tags or {}).get("selection.value"))]
    if not same:
        return str(version)
    sign = -1.0 if (mine.tags or {}).get("selection.mode") == "min" else 1.0
    best = max(same, key=lambda v: (sign * float(v.tags["selection.value"]), -int(v.version)))
    return str(best.version)


def _finite(value: str | None) -> bool:
    try:
        return value is not None and np.isfinite(float(value))
    except ValueError:
        return False


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> ``(name, alias, version)``.

    Raises:
        ValueError: any other form (names the URI).
    """
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"model URI '{uri}' is not models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def resolve_version(client: MlflowClient, name: str, version_or_alias: str) -> Any:
    """The ModelVersion for a version number or an alias."""
    if version_or_alias.isdigit():
        return client.get_model_version(name, version_or_alias)
    return client.get_model_version_by_alias(name, version_or_alias)


def _download_bundle(source: str, tmp: Path, tracking_uri: str) -> Path:
    """Fetch the two files inference needs, not the whole logged model.

    The logged model also holds the pyfunc's code folder (the package, ~150 files):
    downloading it all took ~1.5 s of every ``imaging infer`` start. Models logged
    in another layout are downloaded whole.
    """
    try:
        for name in (BUNDLE_JSON, WEIGHTS):
            mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/artifacts/{name}",
                                                dst_path=str(tmp / "bundle"), tracking_uri=tracking_uri)
        return tmp / "bundle"
    except Exception as exc:  # noqa: BLE001 - any store's "not found" (MLflow, OSError, S3/GCS/Azure clients)
        log.debug("model files not at artifacts/%s (%s): downloading the whole model", BUNDLE_JSON, exc)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp / "whole"),
                                                    tracking_uri=tracking_uri))


def load_bundle(uri: str, tracking_uri: str | None = None, map_location: str = "cpu") -> ModelBundle:
    """Load a registered model for inference (network in eval mode, weights loaded).

    Raises:
        ValueError: malformed URI.
        mlflow.exceptions.MlflowException: unknown model, version or alias.
    """
    name, alias, version = parse_model_uri(uri)
    client = client_for(tracking_uri)
    mv = resolve_version(client, name, alias or version or "")
    with tempfile.TemporaryDirectory(prefix="imaging-model-") as tmp:
        # Download the pinned version, not the alias: an alias moved meanwhile cannot mix versions.
        source = client.get_model_version_download_uri(name, str(mv.version))
        network, bundle = read_bundle_dir(_download_bundle(source, Path(tmp), tracking_uri or mlflow.get_tracking_uri()))
    network.to(map_location)
    return ModelBundle(network=network, network_config=bundle["network_config"],
                       preprocessing=bundle["preprocessing"],
                       labels={int(k): v for k, v in bundle["labels"].items()}, task=bundle["task"], name=name,
                       version=str(mv.version), run_id=mv.run_id, selection=bundle.get("selection"))


def promote(name: str, version_or_alias: str, alias: str, tracking_uri: str | None = None) -> str:
    """Point ``alias`` at a version (given by number or by another alias); returns the version."""
    client = client_for(tracking_uri)
    mv = resolve_version(client, name, version_or_alias)
    client.set_registered_model_alias(name, alias, str(mv.version))
    return str(mv.version)


def list_models(name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered models (or one model's versions) as plain dicts, newest first."""
    client = client_for(tracking_uri)
    if name is None:
        return [{"name": m.name, "aliases": dict(m.aliases or {}),
                 "latest": max((int(v.version) for v in m.latest_versions or []), default=0)}
                for m in client.search_registered_models()]
    versions = client.search_model_versions(f"name='{name}'")
    # search results do not carry aliases in every store: take them from the model.
    by_version: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    return sorted(({"name": v.name, "version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
                    "run_id": v.run_id, "status": v.status, "created": v.creation_timestamp,
                    "tags": dict(v.tags or {})} for v in versions), key=lambda r: -int(r["version"]))
