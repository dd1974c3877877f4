"""`imaging infer` as a library call: load the registered model, run this shard, log it to MLflow.

The MLflow run (experiment ``inference`` by default) holds what reviewers need to
see what ran on what: the model URI, name, version and its training run, the
inference settings, counts ok/error, throughput, and the reports as artifacts.
Only keys and counts go to MLflow: no input paths, no patient identifiers.
"""

from __future__ import annotations

import fcntl
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from imaging.dicom.catalog import CatalogRow, read_catalog
from imaging.engine.predict import InferenceOptions, SeriesPredictor
from imaging.keys import Pseudonymizer, SecretError
from imaging.launch.submit import array_model_uri
from imaging.layout import private_dir_of
from imaging.pipelines.infer.batch import BatchResult, BatchRunner, BatchSettings
from imaging.pipelines.infer.inputs import resolve_input, shard_keys
from imaging.pipelines.infer.remote import (
    TransferRow,
    check_push_config,
    is_url,
    pull_for_inference,
    push_segs,
    write_transfers,
)
from imaging.pipelines.infer.resume import ModelInfo, merge_reports, options_key
from imaging.selection import apply as selection_hook
from imaging.settings import build
from imaging.settings.inference import SegSettings
from imaging.tracking.registry import ModelBundle, load_bundle, parse_model_uri
from imaging.tracking.runs import MlflowTracker, tracking_uri_from_config

log = logging.getLogger(__name__)


@dataclass
class InferenceOutcome:
    result: BatchResult
    model: ModelInfo
    run_id: str | None
    exit_code: int
    transfers: list[TransferRow] = field(default_factory=list)  # DICOMweb pull/push rows (input=URL)


def _seg_deid_options(cfg: DictConfig) -> Any:
    """The configured de-identification options for the SEG header (as `imaging deid` uses them)."""
    from imaging.deid.options import DeidOptions

    raw = cfg.get("deid_options")
    return DeidOptions.from_mapping(OmegaConf.to_container(raw, resolve=True)) if raw else None  # type: ignore[arg-type]


def _pseudonymizer(cfg: DictConfig, needed: bool) -> Pseudonymizer | None:
    try:
        return Pseudonymizer.from_config(cfg.get("secret_file"), bool(cfg.get("demo_key", False)))
    except SecretError:
        if needed:
            raise
        return None


def _shard(cfg: DictConfig) -> tuple[int, int]:
    index, count, offset = int(cfg.shard.index), int(cfg.shard.count), int(cfg.shard.get("offset", 0) or 0)
    return index - offset, count


def _window(preprocessing: dict[str, Any]) -> tuple[float, float] | None:
    intensity = preprocessing.get("intensity") or {}
    if intensity.get("kind") == "window":
        return float(intensity["a_min"]), float(intensity["a_max"])
    return None


def _select(rows: list[CatalogRow], preprocessing: dict[str, Any], match_modality: bool) -> list[CatalogRow]:
    """The series to run on: not ``skipped`` (SEG, SR... are not images) and, when asked,
    of the modality the model was trained on (a CT model says nothing about an MR)."""
    modality = str(preprocessing.get("modality", "")).upper()
    keep = [r for r in rows if r.status != "skipped"]
    if match_modality and modality:
        # An unreadable series (ingest error, modality unknown) stays: it is reported as an error.
        ours = [r for r in keep if r.modality.upper() == modality or (r.status == "error" and not r.modality)]
        if len(ours) < len(keep):
            log.info("%d series of another modality than the model's %s are left out", len(keep) - len(ours), modality)
        keep = ours
    return keep


# --- selection rules, QC, RTSTRUCT, study report (issue 19: imaging.selection) -------------
def _catalog(cfg: DictConfig, dataset: Path, private: Path | None, bundle: ModelBundle,
             rule: selection_hook.Rule | None) -> tuple[list[CatalogRow], selection_hook.Selection | None]:
    """The series to run on: the rule's choice per study, or (no rule) every series of the model's modality."""
    rows = read_catalog(dataset)
    if rule is None:
        return _select(rows, bundle.preprocessing, bool(cfg.get("match_modality", True))), None
    chosen = selection_hook.plan_selection(rule, rows, dataset, private)
    assert chosen is not None
    return chosen.rows, chosen


def _finish(cfg: DictConfig, out: Path, chosen: selection_hook.Selection | None, catalog: list[CatalogRow],
            dataset: Path, private: Path | None, model: ModelInfo, pseudo: Pseudonymizer | None,
            window: tuple[float, float] | None) -> Path | None:
    """After the batch: RTSTRUCT and flags per series of this shard, previews, the study report."""
    index, count = _shard(cfg)
    output = cfg.get("output") or {}
    settings = selection_hook.OutputSettings(rtstruct=bool(output.get("rtstruct", False)),
                                             preview=bool(output.get("preview", False)),
                                             identity=str(cfg.seg.identity), window=window,
                                             deid_options=_seg_deid_options(cfg))
    keys = shard_keys([r.series_key for r in catalog if r.status != "skipped"], index, count)
    return selection_hook.finish(out, chosen, keys, dataset=dataset, private=private, names=model.labels,
                                 model_name=model.name, model_version=model.version, settings=settings,
                                 pseudonymizer=pseudo)
# ------------------------------------------------------------------------------------------


def run_inference(cfg: DictConfig) -> InferenceOutcome:
    """Run (or, with ``merge_only``, only merge) this shard of ``imaging infer``.

    Raises:
        SecretError: no project secret while one is needed (PACS input or deidentified SEG).
        FileNotFoundError: the input does not exist.
        ValueError: malformed model URI or shard settings.
        mlflow.exceptions.MlflowException: unknown model, version or alias.
    """
    out = Path(str(cfg.output_dir)).resolve()
    uri, location = tracking_uri_from_config(cfg)
    name, alias, _ = parse_model_uri(str(cfg.model_uri))
    # issue 29 (10): an alias is resolved once per Slurm array, not once per task.
    bundle: ModelBundle = load_bundle(array_model_uri(str(cfg.model_uri), out, uri), tracking_uri=uri)
    # issue 19: the rule (the model's own, or the config's) and the label subset, validated before any work.
    rule = selection_hook.resolve_rule(cfg.get("select"), getattr(bundle, "selection", None))
    labels = selection_hook.label_subset(bundle.labels, cfg.inference.get("labels"))
    model = ModelInfo(bundle.name, str(bundle.version), alias or "", labels)
    index, count = _shard(cfg)
    remote = is_url(cfg.input)
    check_push_config(build(SegSettings, cfg.seg, "seg"), str(cfg.input))
    is_pacs = remote or not (Path(str(cfg.input)).is_file() or (Path(str(cfg.input)) / "catalog.csv").is_file())
    pseudo = _pseudonymizer(cfg, needed=is_pacs or (cfg.seg.enabled and cfg.seg.identity == "deidentified"))
    if cfg.merge_only:
        dataset = out / "work" / "dataset" if is_pacs else Path(str(cfg.input))
        private_m = private_dir_of(out if is_pacs else dataset, cfg.get("private_dir"))
        catalog, chosen = _catalog(cfg, dataset, private_m, bundle, rule)
        keys = sorted(r.series_key for r in catalog)
        path, complete = merge_reports(out, keys, model)
        if chosen is not None:
            selection_hook.write_study_report(out, chosen)
        log.info("merged report %s (%s)", path, "complete" if complete else "incomplete")
        return InferenceOutcome(BatchResult(merged_report=path, merged_complete=complete), model, None, 0)
    transfers: list[TransferRow] = []
    source: str | Path = str(cfg.input)
    if remote:  # pull into the private side, then ingest it as any PACS export
        assert pseudo is not None
        private_dir = private_dir_of(out, cfg.get("private_dir"))
        (out / "work").mkdir(parents=True, exist_ok=True)
        with open(out / "work" / ".pull.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # array tasks: one pulls, the others then find it on disk
            source, transfers = pull_for_inference(cfg, private_dir, pseudo,
                                                   str(bundle.preprocessing.get("modality", "")))
    from imaging.pipelines.ingest import ingest_options

    dataset, private = resolve_input(source, out, pseudo, cfg.get("private_dir"), **ingest_options(cfg))
    if cfg.get("prepare_only", False):
        # The job before a Slurm array (--dependency=afterok): pull + ingest once, so the array
        # tasks (input=OUT/work/dataset private_dir=OUT.private) do not each take the ingest lock.
        if remote:
            write_transfers(out, transfers, "prepare")
        log.info("prepared %s (private side %s)", dataset, private)
        failed = sum(t.failed for t in transfers)
        return InferenceOutcome(BatchResult(), model, None, 1 if (cfg.fail_on_error and failed) else 0, transfers)
    catalog, chosen = _catalog(cfg, dataset, private, bundle, rule)
    options = InferenceOptions.from_config(OmegaConf.to_container(cfg.inference, resolve=True))  # type: ignore[arg-type]
    model.options_key = options_key({
        # sw_batch_size, device and threads change speed, not the masks: a re-run with another GPU reuses outputs
        "inference": {k: v for k, v in vars(options).items() if k not in ("device", "sw_batch_size", "threads")},
        "seg": {k: v for k, v in OmegaConf.to_container(cfg.seg, resolve=True).items() if k not in ("push", "dimse")},  # type: ignore[union-attr]
        "overlay": bool(cfg.overlay),
        "segments": OmegaConf.to_container(cfg.segments, resolve=True),
        "labels": sorted(int(v) for v in labels),  # inference.labels: a subset changes the outputs
    })
    predictor: Any = SeriesPredictor(bundle.network, bundle.preprocessing, options)
    if len(labels) < len(bundle.labels):  # inference.labels: only these labels are written
        predictor = selection_hook.LabelSubsetPredictor(predictor, list(labels))
    settings = BatchSettings(
        dataset_dir=dataset, output_dir=out, private_dir=private, shard_index=index, shard_count=count,
        prefetch=int(cfg.prefetch), prefetch_workers=int(cfg.get("prefetch_workers", 0) or 0),
        write_workers=int(cfg.get("write_workers", 0) or 0), write_seg=bool(cfg.seg.enabled), seg_identity=str(cfg.seg.identity),
        seg_type=str(cfg.seg.type), seg_geometry=str(cfg.seg.get("geometry", "source")), segments=OmegaConf.to_container(cfg.segments, resolve=True),  # type: ignore[arg-type]
        overlay=bool(cfg.overlay), window=_window(bundle.preprocessing),
        seg_deid_options=_seg_deid_options(cfg),
    )
    result = BatchRunner(predictor, model, settings, pseudo).run(catalog)
    _finish(cfg, out, chosen, catalog, dataset, private, model, pseudo, settings.window)
    if cfg.seg.get("push", False):
        transfers += push_segs(cfg, out, shard_keys([r.series_key for r in catalog], index, count))
    if remote or transfers:
        write_transfers(out, transfers, f"{index}/{count}")
    run_id = None
    if cfg.tracking.get("enabled", True):
        run_id = log_inference_run(uri, location, cfg, bundle, model, result, options,
                                   dataset_dir=dataset, catalog=catalog)
    failed = result.n_error + sum(t.failed for t in transfers)
    code = 1 if (cfg.fail_on_error and failed) else 0
    return InferenceOutcome(result, model, run_id, code, transfers)


def log_inference_run(tracking_uri: str, artifact_location: str | None, cfg: DictConfig, bundle: ModelBundle,
                      model: ModelInfo, result: BatchResult, options: InferenceOptions,
                      dataset_dir: Path | None = None, catalog: list[CatalogRow] | None = None) -> str:
    """Log one shard's inference run; returns the MLflow run id."""
    tracker = MlflowTracker(tracking_uri, str(cfg.tracking.experiment_name), artifact_location, "", "")
    index, count = _shard(cfg)
    run_id = tracker.start(None, str(cfg.tracking.run_name))
    try:
        mlflow.log_params({
            "model_uri": str(cfg.model_uri), "model_name": model.name, "model_version": model.version,
            "model_alias": model.alias, "model_run_id": str(bundle.run_id or ""), "shard": f"{index}/{count}",
            "seg.identity": str(cfg.seg.identity), "seg.type": str(cfg.seg.type), "device": str(options.device),
            **{f"inference.{k}": str(v) for k, v in vars(options).items()},
        })
        mlflow.set_tags({"imaging.stage": "infer", "model_version": model.version})
        mlflow.log_metrics({
            "n_series": result.n_total, "n_ok": result.n_ok, "n_error": result.n_error,
            "n_skipped_done": result.n_skipped_done, "wall_s": result.wall_s, "series_per_s": result.series_per_s,
        })
        for path in (result.shard_report, result.merged_report):
            if path is not None and path.is_file():
                mlflow.log_artifact(str(path), "report")
        merged_json = (result.merged_report or Path("/nonexistent")).with_suffix(".json")
        if merged_json.is_file():
            mlflow.log_artifact(str(merged_json), "report")
        if dataset_dir is not None:  # the reviewer's view: input dataset, review images, description
            from imaging.tracking.inference import log_inference_review

            log_inference_review(tracker.client, run_id, result.shard_report, dataset_dir, catalog or [], model.labels)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id
