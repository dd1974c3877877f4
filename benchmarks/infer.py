"""End-to-end `imaging infer` vs the pure model time, in one run.

    .venv/bin/python benchmarks/infer.py [--series 12] [--device auto] [--workdir DIR]

1. writes a synthetic export, ingests it and registers a small UNet in a SQLite
   MLflow store (setup, not timed);
2. times ``imaging infer`` as a user runs it (a subprocess: start-up, model
   download from the registry, read, preprocess, sliding window, inversion,
   NIfTI + DICOM SEG + overlay + report + MLflow run);
3. times the same sliding-window forward passes on tensors preprocessed and
   loaded beforehand (the floor any pipeline can reach);
and prints both and their ratio (goal <= 1.15: reading and writing hide behind
the model). The batch's own wall time (without process start-up) is printed too.

On a CPU the model and the pipeline share the cores, so the ratio there is bounded
by the total CPU work, not by the overlap. ``--threads N`` gives the model N threads
(``inference.threads``) in both timings; by default, on a machine without a GPU, the
benchmark runs twice: the model on every core, then on every core but one, which
leaves the prefetch and writer threads a core of their own as a GPU would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRE = {"task": "segmentation", "modality": "CT", "orientation": "RAS", "spacing": [2.0, 2.0, 2.5],
       "intensity": {"kind": "window", "a_min": -200, "a_max": 300, "b_min": 0.0, "b_max": 1.0, "clip": True},
       "roi_size": [64, 64, 32]}
NET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [8, 16, 32, 64],
       "strides": [2, 2, 2], "num_res_units": 1}


def setup(work: Path, n_series: int) -> Path:
    import mlflow
    import torch

    from imaging.dicom.catalog import read_catalog
    from imaging.keys import Pseudonymizer
    from imaging.models.registry import build_network
    from imaging.pipelines.ingest import ingest
    from imaging.synth import generate
    from imaging.tracking.registry import register_model

    subjects = max(1, -(-n_series // 2))
    while True:  # each synthetic subject has two CT series (one more subject until there are enough)
        export = work / f"export{subjects}"
        if not export.exists():
            generate(export, subjects=subjects, seed=1, cases="none", dicomdir=False)
            ingest(export, work / f"dataset{subjects}", Pseudonymizer.from_config(demo_key=True), progress=False)
        cts = [r for r in read_catalog(work / f"dataset{subjects}") if r.status == "ok" and r.modality == "CT"]
        if len(cts) >= n_series:
            break
        subjects += 1
    dataset = work / f"dataset{subjects}"
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    (work / "mlflow").mkdir(exist_ok=True)
    if mlflow.get_experiment_by_name("bench") is None:
        exp = mlflow.create_experiment("bench", artifact_location=(work / "mlflow" / "artifacts").as_uri())
        torch.manual_seed(0)
        with mlflow.start_run(experiment_id=exp):
            register_model(build_network(NET), network_config=NET, preprocessing=PRE,
                           labels={0: "background", 1: "liver", 2: "spleen", 3: "kidney"},
                           task="segmentation", name="bench", alias="champion")
    return dataset


def pure_model_seconds(work: Path, dataset: Path, device: str, sw_batch_size: int,
                       threads: int | None) -> tuple[float, int]:
    from imaging.dicom.catalog import read_catalog
    from imaging.engine.predict import InferenceOptions, SeriesPredictor
    from imaging.tracking.registry import load_bundle

    bundle = load_bundle("models:/bench@champion", tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    predictor = SeriesPredictor(bundle.network, bundle.preprocessing,
                                InferenceOptions(device=device, sw_batch_size=sw_batch_size, threads=threads))
    rows = [r for r in read_catalog(dataset) if r.status == "ok" and r.modality == "CT"]
    prepared = [predictor.prepare(dataset / r.volume_path) for r in rows]
    for p in prepared:  # tensors on the device before the clock starts
        p.data["image"] = p.data["image"].to(predictor.device)
    predictor.forward(prepared[0])  # warm-up (kernels, allocator), as the batch's first series also pays
    if predictor.device.type == "cuda":
        import torch
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for p in prepared:
        predictor.forward(p)
    return time.perf_counter() - t0, len(prepared)


def end_to_end_seconds(work: Path, dataset: Path, device: str, sw_batch_size: int,
                       threads: int | None) -> tuple[float, dict]:
    out = work / f"out-{time.time_ns()}"
    cmd = [sys.executable, "-m", "imaging", "infer", "model=models:/bench@champion", f"input={dataset}",
           f"output_dir={out}", f"paths.root_dir={work}", "demo_key=true", f"inference.device={device}",
           f"inference.sw_batch_size={sw_batch_size}", f"inference.threads={threads or 'null'}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = json.loads((out / "report.json").read_text())["rows"]
    timing = {k: sum(r[k] for r in rows) for k in ("t_load", "t_preprocess", "t_infer", "t_write")}
    import mlflow  # the batch's own wall time (no process start-up) is a metric of the inference run

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["inference"], order_by=["start_time DESC"], max_results=1,
                             output_format="list")[0]
    timing["batch_wall"] = float(run.data.metrics["wall_s"])
    return wall, timing


def measure(work: Path, dataset: Path, args: argparse.Namespace, threads: int | None) -> None:
    e2e, timing = end_to_end_seconds(work, dataset, args.device, args.sw_batch_size, threads)
    pure, n = pure_model_seconds(work, dataset, args.device, args.sw_batch_size, threads)
    print(f"\n== series: {n} CT volumes, device={args.device}, sw_batch_size={args.sw_batch_size}, "
          f"model threads={threads or 'torch default'}")
    print(f"imaging infer end to end (process start to exit): {e2e:8.2f} s  ({n / e2e:.2f} series/s)")
    print(f"pure model (same forward passes, tensors preloaded): {pure:8.2f} s  ({n / pure:.2f} series/s)")
    print(f"ratio end-to-end / pure model: {e2e / pure:.2f}  (goal <= 1.15)")
    batch = timing.pop("batch_wall")
    print(f"batch alone (no process start-up, model download, MLflow logging): {batch:8.2f} s  "
          f"ratio {batch / pure:.2f}; start-up and logging {e2e - batch:.2f} s")
    print("per-stage sums inside the batch (overlapped by the pipeline): "
          + ", ".join(f"{k}={v:.2f}s" for k, v in timing.items()))


def main() -> None:
    import os

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=12)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sw-batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="model threads on the CPU (default: see above)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-infer-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset = setup(work, args.series)
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    cores = len(os.sched_getaffinity(0))
    runs = [args.threads] if args.threads or not on_cpu or cores < 2 else [None, cores - 1]
    for threads in runs:
        measure(work, dataset, args, threads)


if __name__ == "__main__":
    main()
