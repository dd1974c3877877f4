"""An ``imaging infer`` output for review: report tables, volume plots, best and worst cases.

The layout (see :mod:`imaging.pipelines.infer.resume`): ``<out>/report.csv`` (+ ``report.json``
with a summary), ``<out>/<series_key>/{seg.nii.gz,seg.dcm,overlay.png}``; a PACS
input was ingested into ``<out>/work/dataset`` with its private side (source file
lists) in ``<out>.private``. Label names come from the report's
``volume_ml_<label>`` columns, written in label-value order (1, 2, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from imaging.layout import private_dir_of
from imaging.review.dataset import load_catalog, load_labels, load_nifti
from imaging.review.plots import LABEL_COLOURS

VOLUME_PREFIX = "volume_ml_"
TIMINGS = ("t_load", "t_preprocess", "t_infer", "t_write")


@dataclass(frozen=True)
class PredictionPaths:
    """Where an inference output keeps its parts."""

    predictions_dir: Path
    dataset_dir: Path | None
    private_dir: Path | None

    def series(self, key: str) -> Path:
        return self.predictions_dir / key


def prediction_paths(predictions_dir: str | os.PathLike[str], dataset_dir: str | os.PathLike[str] | None = None,
                     private_dir: str | os.PathLike[str] | None = None) -> PredictionPaths:
    """Fill in the defaults: dataset ``<out>/work/dataset`` (PACS input), private ``<out>.private``
    (else ``<dataset>.private``). A default that does not exist becomes None.

    Raises:
        FileNotFoundError: ``predictions_dir`` has no ``report.csv``.
    """
    out = Path(predictions_dir)
    if not (out / "report.csv").is_file():
        raise FileNotFoundError(f"no report.csv in predictions folder '{out}' (run `imaging infer` first)")
    ds = Path(dataset_dir) if dataset_dir else out / "work" / "dataset"
    ds_found = ds if (ds / "catalog.csv").is_file() else None
    if private_dir:
        priv: Path | None = Path(private_dir)
    else:
        candidates = [private_dir_of(out)] + ([private_dir_of(ds)] if ds_found else [])
        priv = next((p for p in candidates if (p / "sources").is_dir()), None)
    return PredictionPaths(out, ds_found, priv)


def load_report(predictions_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``report.csv`` with numbers as numbers (volumes, voxels, timings; empty -> NaN)."""
    df = pd.read_csv(Path(predictions_dir) / "report.csv", dtype={"series_key": str, "subject_key": str,
                                                                   "reason": str, "model_version": str})
    df["reason"] = df["reason"].fillna("")
    numeric = [c for c in df.columns if c.startswith(("volume_ml_", "voxels_", "t_")) or c == "seg_frames"]
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def report_summary(predictions_dir: str | os.PathLike[str]) -> dict[str, object]:
    """The ``summary`` of ``report.json`` (counts, completeness, model); empty when absent."""
    path = Path(predictions_dir) / "report.json"
    return dict(json.loads(path.read_text(encoding="utf-8")).get("summary", {})) if path.is_file() else {}


def label_names(report: pd.DataFrame) -> dict[int, str]:
    """Model label value -> name, from the ``volume_ml_<name>`` columns (in value order)."""
    names = [c[len(VOLUME_PREFIX):] for c in report.columns if c.startswith(VOLUME_PREFIX)]
    return {i: n for i, n in enumerate(names, start=1)}


def volumes_long(report: pd.DataFrame) -> pd.DataFrame:
    """``series_key, label, volume_ml`` for every ok series and label."""
    ok = report[report["status"] == "ok"]
    cols = [c for c in report.columns if c.startswith(VOLUME_PREFIX)]
    long = ok.melt(id_vars=["series_key"], value_vars=cols, var_name="label", value_name="volume_ml")
    long["label"] = long["label"].str[len(VOLUME_PREFIX):]
    return long.reset_index(drop=True)


def failures(report: pd.DataFrame) -> pd.DataFrame:
    """Series that failed (and ok series with a remark, e.g. no SEG written), with the reason."""
    rows = report[(report["status"] != "ok") | (report["reason"] != "")]
    return rows[["series_key", "status", "reason"]].sort_values(["status", "series_key"]).reset_index(drop=True)


def volume_distributions(report: pd.DataFrame) -> Figure:
    """Predicted volume per label in mL: one panel per label (each its own scale, since organs
    differ by orders of magnitude), a box over the series and every series as a point.

    Raises:
        ValueError: no ok series in the report.
    """
    long = volumes_long(report)
    if long.empty:
        raise ValueError("the report has no ok series: no volumes to plot")
    labels = list(dict.fromkeys(long["label"]))
    fig = Figure(figsize=(max(5.0, 3.2 * len(labels)), 4.0), layout="constrained")
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed jitter: the same picture every run
    for i, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        values = long.loc[long["label"] == name, "volume_ml"].dropna().to_numpy()
        ax.boxplot([values], positions=[0], widths=0.5, showfliers=False)
        ax.scatter(rng.uniform(-0.15, 0.15, len(values)), values, s=18, color=LABEL_COLOURS[i % len(LABEL_COLOURS)],
                   alpha=0.8, zorder=3)
        ax.set_xticks([0], [name])
        ax.set_title(f"{name}: median {np.median(values):.1f} mL" if len(values) else f"{name}: no value")
        ax.set_xlabel("label")
        ax.set_ylabel("predicted volume (mL)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Predicted volumes per label ({int(report['status'].eq('ok').sum())} ok series)")
    return fig


def status_and_timing(report: pd.DataFrame) -> Figure:
    """Left: series per status; right: mean seconds per stage (load, preprocess, infer, write)."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_s, ax_t = fig.subplots(1, 2)
    counts = report["status"].value_counts().reindex(["ok", "error"], fill_value=0)
    ax_s.bar(counts.index, counts.to_numpy(), color=["#2ca02c", "#d62728"])
    ax_s.set_xlabel("status")
    ax_s.set_ylabel("series (count)")
    ax_s.set_title("Inference outcome")
    ok = report[report["status"] == "ok"]
    stages = [t for t in TIMINGS if t in ok]
    means = [float(ok[t].mean()) if len(ok) else 0.0 for t in stages]
    ax_t.barh([s[2:] for s in stages], means, color="#1f77b4")
    ax_t.set_xlabel("mean time per series (s)")
    ax_t.set_ylabel("stage")
    ax_t.set_title("Where the time goes (ok series)")
    return fig


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(pred.sum() + ref.sum())
    return float(2 * (pred & ref).sum() / total) if total else float("nan")


def case_scores(paths: PredictionPaths, report: pd.DataFrame) -> pd.DataFrame:
    """Per ok series, how good the prediction looks, on two bases kept apart.

    ``dice_<label>`` and ``dice_mean``: Dice against the reference label of the
    ingested dataset when there is one (labels matched by *name*: dataset and
    model may number them differently); NaN without a reference.
    ``volume_z``: the largest robust z-score (median/MAD over all series) of the
    predicted volumes: how unusual the series' volumes are, reference or not.
    """
    names = label_names(report)
    ok = report[report["status"] == "ok"].reset_index(drop=True)
    catalog = load_catalog(paths.dataset_dir).set_index("series_key") if paths.dataset_dir else None
    ref_values = {n: v for v, n in load_labels(paths.dataset_dir).items()} if paths.dataset_dir else {}
    vols = ok[[f"{VOLUME_PREFIX}{n}" for n in names.values()]].to_numpy(dtype=float)
    rows = []
    for i, row in ok.iterrows():
        key = str(row["series_key"])
        record: dict[str, object] = {"series_key": key}
        label_rel = str(catalog.loc[key, "label_path"]) if catalog is not None and key in catalog.index else ""
        pred_path = paths.series(key) / "seg.nii.gz"
        scores: dict[str, float] = {}
        if label_rel and paths.dataset_dir is not None and pred_path.is_file():
            pred = np.asarray(load_nifti(pred_path).dataobj)
            ref = np.asarray(load_nifti(paths.dataset_dir / label_rel).dataobj)
            scores = {n: dice(pred == v, ref == ref_values[n]) for v, n in names.items() if n in ref_values}
        record.update({f"dice_{n}": scores.get(n, np.nan) for n in names.values()})
        finite = [s for s in scores.values() if np.isfinite(s)]
        record["dice_mean"] = float(np.mean(finite)) if finite else np.nan
        record["volume_z"] = _robust_z(vols)[i] if len(ok) else np.nan
        rows.append(record)
    return pd.DataFrame(rows)


def _robust_z(vols: np.ndarray) -> np.ndarray:
    """Per series, the largest |value - median| / (1.4826 MAD) over labels (MAD 0: relative to the median)."""
    med = np.nanmedian(vols, axis=0)
    mad = np.nanmedian(np.abs(vols - med), axis=0) * 1.4826
    scale = np.where(mad > 0, mad, np.where(med > 0, med, 1.0))
    z: np.ndarray = np.nanmax(np.abs(vols - med) / scale, axis=1)
    return z


def worst_and_best(scores: pd.DataFrame, n: int = 1) -> tuple[list[str], list[str], str]:
    """Keys of the ``n`` worst and ``n`` best series and the basis used.

    Dice against the reference when any series has one (only those are ranked),
    else the volume outlier score (highest ``volume_z`` is worst).
    """
    if scores.empty:
        return [], [], "none"
    if scores["dice_mean"].notna().any():
        ranked, basis = scores.dropna(subset=["dice_mean"]).sort_values("dice_mean", kind="stable"), "Dice vs reference"
    else:
        ranked, basis = scores.sort_values("volume_z", ascending=False, kind="stable"), "volume outlier (robust z)"
    keys = list(ranked["series_key"])
    worst = keys[:n]
    best = [k for k in reversed(keys) if k not in worst][:n]
    return worst, best, basis


def case_views(paths: PredictionPaths, report: pd.DataFrame, series_key: str, title: str = "") -> Figure:
    """Orthogonal views of a series with its prediction filled and the reference (if any) as contours.

    The reference is renumbered to the model's label values by name, so a label has
    one colour in both.

    Raises:
        FileNotFoundError: the ingested dataset (the image) or the prediction is missing.
    """
    from imaging.review.dataset import load_volume
    from imaging.review.plots import orthoviews

    if paths.dataset_dir is None:
        raise FileNotFoundError(f"no ingested dataset for '{paths.predictions_dir}': pass dataset_dir "
                                "(the dataset inference ran on) to show the images")
    pred_path = paths.series(series_key) / "seg.nii.gz"
    if not pred_path.is_file():
        raise FileNotFoundError(f"prediction '{pred_path}' is missing")
    catalog = load_catalog(paths.dataset_dir).set_index("series_key", drop=False)
    row = catalog.loc[series_key]
    vol = load_volume(paths.dataset_dir, row, label_path=pred_path)
    names = label_names(report)
    reference = None
    if row["label_path"]:
        ref_vol = load_volume(paths.dataset_dir, row)
        by_name = {n: v for v, n in load_labels(paths.dataset_dir).items()}
        reference = np.zeros_like(ref_vol.label)
        for value, name in names.items():
            if name in by_name:
                reference[ref_vol.label == by_name[name]] = value
    return orthoviews(vol, names=names, reference=reference,
                      title=title or f"series {series_key[:16]}: prediction (filled)"
                      + (", reference (contour)" if reference is not None else ""))
