"""What a reviewer sees first in the MLflow UI: run and model-version descriptions.

:func:`describe_run` writes the run's description (the ``mlflow.note.content``
tag the UI renders as markdown on the run page): the dataset it came from
(catalog hash and counts), Dice per label at the best and the last validation,
the config highlights (the full config is the ``config/train.yaml`` artifact),
links to the review images and to the model versions the run registered.
:func:`describe_model_version` writes a registered version's description: its
lineage (the training run, experiment, commit, dataset) and its metrics.

Everything comes from what the run already logged (params, metrics, tags,
artifact names): keys, hashes and numbers only, never a patient identifier.
An ``imaging infer`` run (tag ``imaging.stage=infer``) gets its own description:
the model version and the training run behind it, counts and throughput.
Links are the UI's own routes (``#/experiments/<id>/runs/<id>``), so they work
from the embedded store's ``mlflow ui`` and from a server alike.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Iterable

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

NOTE_TAG = "mlflow.note.content"
STAGE_TAG = "imaging.stage"  # "infer" on `imaging infer` runs (training runs have none)
# MLflow's model-version description column is VARCHAR(5000) on PostgreSQL/MySQL (SQLite
# does not enforce it); a run note (a tag value) may hold 8000. One limit that fits both.
MAX_NOTE = 5000
DICE_PREFIX = "val_dice_"
MONITOR = "val_dice_mean"
MAX_IMAGES = 12  # about 2000 of the 5000 characters a description may hold
MAX_SERIES_ROWS = 40
# (heading, params shown together); a param a run lacks is left out.
HIGHLIGHTS = [
    ("model", ["model.name", "model.channels", "model.strides", "model.feature_size", "model.num_res_units"]),
    ("data", ["data.labels", "data.patch_size", "data.preprocessing.spacing", "data.batch_size",
              "data.samples_per_volume", "data.cache"]),
    ("optimisation", ["trainer.max_epochs", "trainer.lr", "trainer.scheduler.kind", "trainer.weight_decay",
                      "trainer.amp", "trainer.accumulate_grad_batches", "trainer.seed"]),
    ("split", ["data.split.folds", "data.split.fold", "data.split.seed"]),
    ("compute", ["launcher.name", "trainer.accelerator", "trainer.devices"]),
]


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


# MLflow 3.17's UI picks its view (GenAI or model training) from this query parameter,
# else from the browser's last choice (GenAI by default): our links open the training view.
VIEW = "?workflowType=machine_learning"


def run_link(run: Run, sub: str = "") -> str:
    return f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{sub}{VIEW}"


def best_step(client: MlflowClient, run_id: str, monitor: str = MONITOR) -> int | None:
    """The epoch with the highest ``monitor`` value (the first of ties); None without history."""
    history = client.get_metric_history(run_id, monitor)
    finite = [m for m in history if math.isfinite(m.value)]
    if not finite:
        return None
    return max(finite, key=lambda m: (m.value, -m.step)).step


def _configured_labels(run: Run) -> list[str]:
    """``data.labels`` as configured (the model's label order); empty when not a list."""
    try:
        value = ast.literal_eval(run.data.params.get("data.labels", "[]"))
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def dice_rows(client: MlflowClient, run: Run) -> list[tuple[str, float | None, float | None]]:
    """``(label, Dice at the best epoch, Dice at the last validation)``; ``mean`` last."""
    logged = {k[len(DICE_PREFIX):] for k in run.data.metrics if k.startswith(DICE_PREFIX)} - {"mean"}
    labels = [n for n in _configured_labels(run) if n in logged] + sorted(logged - set(_configured_labels(run)))
    labels += ["mean"] if DICE_PREFIX + "mean" in run.data.metrics else []
    step = best_step(client, run.info.run_id)
    rows = []
    for name in labels:
        at_best = None
        if step is not None:
            at_best = next((m.value for m in client.get_metric_history(run.info.run_id, DICE_PREFIX + name)
                            if m.step == step), None)
        rows.append((name, at_best, run.data.metrics.get(DICE_PREFIX + name)))
    return rows


def _dice_table(client: MlflowClient, run: Run) -> list[str]:
    rows = dice_rows(client, run)
    if not rows:
        return ["_No per-label Dice logged (classification run, or no validation yet)._"]
    step = best_step(client, run.info.run_id)
    last_step = max((m.step for m in client.get_metric_history(run.info.run_id, MONITOR)), default=None)
    out = [f"| label | best epoch ({step if step is not None else '–'}) | last validation "
           f"({last_step if last_step is not None else '–'}) |", "|---|---:|---:|"]
    for name, best, last in rows:
        label = f"**{name}**" if name == "mean" else name
        out.append(f"| {label} | {_fmt(best)} | {_fmt(last)} |")
    return out


def _dataset_lines(run: Run) -> list[str]:
    p, t = run.data.params, run.data.tags
    sha = t.get("dataset.catalog_sha256", "")
    return [
        "| | |", "|---|---|",
        f"| dataset (MLflow input) | `catalog-{sha[:12]}` · series keys: artifact `split.json` |" if sha else
        "| dataset (MLflow input) | not logged |",
        f"| catalog sha256 | `{sha or 'not logged'}` |",
        f"| catalog rows / ok series / usable items | {p.get('dataset.n_rows', '?')} / {p.get('dataset.n_ok', '?')}"
        f" / {p.get('dataset.n_items', '?')} |",
        f"| subjects | {p.get('dataset.n_subjects', t.get('dataset.n_subjects', '?'))} |",
        f"| train / validation items | {p.get('dataset.n_train', '?')} / {p.get('dataset.n_val', '?')} |",
        f"| modality, task | {p.get('data.modality', '?')}, {p.get('data.task', '?')} |",
    ]


def _highlights(run: Run) -> list[str]:
    p = run.data.params
    out = ["| | |", "|---|---|"]
    for heading, keys in HIGHLIGHTS:
        shown = [f"{k.split('.', 1)[1].removeprefix('split.')}={p[k]}" for k in keys if k in p]
        if shown:
            out.append(f"| {heading} | {', '.join(shown)} |")
    return out


def _review_links(client: MlflowClient, run: Run) -> list[str]:
    images = sorted(a.path for a in client.list_artifacts(run.info.run_id, "review") if a.path.endswith(".png"))
    if not images:
        return ["_No review images logged._"]
    out = [f"- [{path.rsplit('/', 1)[-1]}]({run_link(run, '/artifactPath/' + path)})" for path in images[:MAX_IMAGES]]
    if len(images) > MAX_IMAGES:
        out.append(f"- … and {len(images) - MAX_IMAGES} more under `review/`")
    return out


def _versions_of(client: MlflowClient, run_id: str) -> list[tuple[str, str, list[str]]]:
    """``(model name, version, aliases)`` registered from ``run_id``."""
    out = []
    for mv in client.search_model_versions(f"run_id='{run_id}'"):
        aliases = [a for a, v in (client.get_registered_model(mv.name).aliases or {}).items() if str(v) == str(mv.version)]
        out.append((mv.name, str(mv.version), sorted(aliases)))
    return sorted(out, key=lambda r: (r[0], int(r[1])))


def _clip(lines: Iterable[str]) -> str:
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_NOTE:
        text = text[: MAX_NOTE - 40].rsplit("\n", 1)[0] + "\n\n_(description truncated)_\n"
    return text


def run_description(run_id: str, client: MlflowClient) -> str:
    """The markdown :func:`describe_run` writes (without writing it).

    Raises:
        mlflow.exceptions.MlflowException: unknown run id.
    """
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    t = run.data.tags
    if t.get(STAGE_TAG) == "infer":
        return _clip(_inference_lines(client, run, exp.name))
    epochs = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)
    lines = [
        f"## Training run `{run.info.run_name}` · experiment `{exp.name}`",
        f"{epochs} epoch(s) · git `{t.get('git_commit', 'unknown')}` · "
        f"torch {t.get('torch', '?')} · full config: artifact `config/train.yaml`, split: `split.json`",
        "", "### Dataset", *_dataset_lines(run),
        "", "### Validation Dice per label", *_dice_table(client, run),
        "", "### Config highlights", *_highlights(run),
        "", "### Review images (best checkpoint on validation cases)", *_review_links(client, run),
    ]
    versions = _versions_of(client, run_id)
    if versions:
        lines += ["", "### Registered as"]
        lines += [f"- [{name} v{version}](#/models/{name}/versions/{version})"
                  + (f" · aliases: {', '.join('@' + a for a in aliases)}" if aliases else "")
                  + f" · `models:/{name}/{version}`" for name, version, aliases in versions]
    return _clip(lines)


def _training_run_link(client: MlflowClient, run_id: str) -> str:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return f"`{run_id}` (no longer in this store)"
    return f"[`{run.info.run_name}`]({run_link(run)})"


def _inference_lines(client: MlflowClient, run: Run, experiment: str) -> list[str]:
    """An ``imaging infer`` shard: which model (and its training run) ran on how many series, how fast."""
    p, m = run.data.params, run.data.metrics
    name, version = p.get("model_name", "?"), p.get("model_version", "?")
    trained_by = _training_run_link(client, p["model_run_id"]) if p.get("model_run_id") else "unknown"

    def count(key: str) -> str:
        return f"{m[key]:.0f}" if key in m else "?"

    return [
        f"## Inference run `{run.info.run_name}` · experiment `{experiment}`",
        f"Model [{name} v{version}](#/models/{name}/versions/{version}) as `{p.get('model_uri', '?')}`, "
        f"trained by run {trained_by}",
        "", "| | |", "|---|---|",
        f"| shard | {p.get('shard', '?')} |",
        f"| series in shard / ok / error / already done | {count('n_series')} / {count('n_ok')} / {count('n_error')}"
        f" / {count('n_skipped_done')} |",
        f"| wall time | {_fmt(m.get('wall_s'))} s ({_fmt(m.get('series_per_s'))} series/s) |",
        f"| DICOM SEG | identity {p.get('seg.identity', '?')}, type {p.get('seg.type', '?')} |",
        f"| sliding window | overlap {p.get('inference.overlap', '?')}, TTA flip {p.get('inference.tta_flip', '?')},"
        f" device {p.get('device', '?')} |",
        "", "Per-series volumes (mL), status and timings: artifacts under `report/` (`report.csv`, `report.json`).",
    ]


def _series_table(rows: list[dict[str, str]], seg_uids: dict[str, str]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return ["_No series predicted in this shard._"]
    volumes = sorted(k for k in ok[0] if k.startswith("volume_ml_"))
    head = ["series key", "SEG SeriesInstanceUID", *(k.removeprefix("volume_ml_") + " (mL)" for k in volumes)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ok[:MAX_SERIES_ROWS]:
        cells = [f"`{r['series_key'][:16]}`", f"`{seg_uids.get(r['series_key']) or '–'}`",
                 *(r.get(k) or "–" for k in volumes)]
        out.append("| " + " | ".join(cells) + " |")
    if len(ok) > MAX_SERIES_ROWS:
        out.append(f"\n_… and {len(ok) - MAX_SERIES_ROWS} more series in `report/`._")
    return out


def inference_description(run_id: str, client: MlflowClient, rows: list[dict[str, str]],
                          seg_uids: dict[str, str], catalog_sha256: str) -> str:
    """The description of an inference shard with its report rows: the model, the input,
    counts, a per-series table (with the SEG's SeriesInstanceUID), failures, review images.

    Raises:
        mlflow.exceptions.MlflowException: unknown run id.
    """
    from imaging.tracking.inputs import dataset_name

    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    failed = [r for r in rows if r.get("status") == "error"]
    lines = _inference_lines(client, run, exp.name)[:-1]
    lines += ["", "### Input",
              f"Dataset `{dataset_name(catalog_sha256)}` (catalog sha256 `{catalog_sha256 or 'unknown'}`): "
              f"{len(rows)} series of {len({r.get('subject_key') for r in rows})} subject(s) in this shard; "
              "the series keys are the run's dataset input.",
              "", "### Per-series results", *_series_table(rows, seg_uids),
              "", f"### Failures ({len(failed)})"]
    lines += [f"- `{r['series_key'][:16]}`: {r.get('reason', '')[:200]}" for r in failed[:MAX_SERIES_ROWS]] or [
        "_None._"]
    lines += ["", "### Review images (prediction overlays)", *_review_links(client, run),
              "", "Full report (volumes in mL, timings): artifacts under `report/`."]
    return _clip(lines)


def describe_run(run_id: str, client: MlflowClient) -> str:
    """Write the run's description (tag ``mlflow.note.content``) and return it.

    Call it at the end of training, after review images and registration, so
    the description can link to them; calling it again rewrites it.

    Raises:
        mlflow.exceptions.MlflowException: unknown run id, or the store refuses the tag.
    """
    text = run_description(run_id, client)
    client.set_tag(run_id, NOTE_TAG, text)
    log.info("wrote the description of MLflow run %s", run_id)
    return text


def model_version_description(name: str, version: str | int, client: MlflowClient) -> str:
    """The markdown :func:`describe_model_version` writes (without writing it).

    Raises:
        mlflow.exceptions.MlflowException: unknown model or version.
    """
    mv = client.get_model_version(name, str(version))
    summary = f"{name} v{mv.version}"
    if mv.run_id:
        sha = client.get_run(mv.run_id).data.tags.get("dataset.catalog_sha256", "")
        summary += f" · trained on catalog-{sha[:12]}" if sha else ""
    # First line plain text: the versions list shows the description's start unrendered.
    lines = [summary, "", f"## {name} v{mv.version}",
             f"Load with `models:/{name}/{mv.version}` (pinned) or through an alias, `models:/{name}@<alias>`."]
    tags = dict(mv.tags or {})
    if tags.get("task"):
        lines.append(f"Task: {tags['task']} · labels: {tags.get('labels', '?')}")
    if not mv.run_id:
        lines += ["", "_No training run recorded for this version: lineage unknown._"]
        return _clip(lines)
    run = client.get_run(mv.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    t = run.data.tags
    lines += [
        "", "### Lineage",
        f"- training run: [`{run.info.run_name}`]({run_link(run)}) (`{run.info.run_id}`), experiment "
        f"`{exp.name}`",
        f"- code: git `{t.get('git_commit', 'unknown')}` · torch {t.get('torch', '?')}",
        f"- data: dataset `catalog-{t.get('dataset.catalog_sha256', '')[:12]}` (the run's input; series keys in "
        f"its `split.json`), catalog sha256 `{t.get('dataset.catalog_sha256', 'not logged')}` · "
        f"{run.data.params.get('dataset.n_subjects', '?')} subjects, "
        f"{run.data.params.get('dataset.n_train', '?')} train / {run.data.params.get('dataset.n_val', '?')} val items",
        "- weights: the run's best checkpoint (validation Dice), config: the run's `config/train.yaml`",
        "", "### Validation Dice per label", *_dice_table(client, run),
        "", "### Config highlights", *_highlights(run),
    ]
    return _clip(lines)


def describe_model_version(name: str, version: str | int, client: MlflowClient) -> str:
    """Write a registered model version's description (lineage, metrics, data) and return it.

    Raises:
        mlflow.exceptions.MlflowException: unknown model or version.
    """
    text = model_version_description(name, version, client)
    client.update_model_version(name, str(version), description=text)
    log.info("wrote the description of %s version %s", name, version)
    return text
