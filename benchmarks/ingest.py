"""Benchmark (not a test): `imaging ingest` vs dcm2niix on the same inputs, in one run.

(a) one 512x512x300 CT series; (b) 2,000+ small MR files in many series.
Both tools run as fresh processes (start-up included), writing gzip NIfTI at the
same zlib level (ours: 1; dcm2niix ``-z i -1``); dcm2niix at its default level
6 is printed too. Goals: ratio <= 1.5 on (a), <= 2.0 on (b).

    .venv/bin/python benchmarks/ingest.py [--workdir DIR] [--slices 300] [--files 2000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def dcm2niix_bin() -> str:
    local = BIN / "dcm2niix"
    return str(local) if local.exists() else (shutil.which("dcm2niix") or "dcm2niix")


def timed(cmd: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of ``cmd`` writing into a fresh ``out``.

    CPU time is printed too: on a shared machine wall time swings with other load.
    """
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(f"{out}.private"), ignore_errors=True)
    out.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def ours(export: Path, out: Path, workers: int) -> list[str]:
    return [str(BIN / "imaging"), "ingest", f"input_dir={export}", f"output_dir={out}", "demo_key=true",
            "progress=false", f"workers={workers}", f"paths.root_dir={out.parent}"]


def theirs(export: Path, out: Path, level: int) -> list[str]:
    # -b y (its default): a BIDS JSON sidecar per volume, as ours writes one.
    return [dcm2niix_bin(), "-z", "i", f"-{level}", "-b", "y", "-f", "%j_%s", "-o", str(out), str(export)]


def bench(name: str, export: Path, work: Path, repeat: int, workers: int, goal: float) -> dict[str, tuple[float, float]]:
    runs = {
        "ours": lambda: timed(ours(export, work / f"{name}-ours", workers), work / f"{name}-ours"),
        "d2n1": lambda: timed(theirs(export, work / f"{name}-d2n1", 1), work / f"{name}-d2n1"),
        "d2n6": lambda: timed(theirs(export, work / f"{name}-d2n6", 6), work / f"{name}-d2n6"),
    }
    best = {k: min((f() for _ in range(repeat)), key=lambda t: t[0]) for k, f in runs.items()}
    n_files = sum(1 for p in export.rglob("*") if p.is_file())
    (w, c), (w1, c1), (w6, c6) = best["ours"], best["d2n1"], best["d2n6"]
    print(f"({name}) {n_files} files            wall s   cpu s   wall ratio  cpu ratio")
    print(f"    imaging ingest       {w:7.2f} {c:7.2f}")
    print(f"    dcm2niix -z i -1     {w1:7.2f} {c1:7.2f}   {w / w1:9.2f} {c / c1:9.2f}   (goal <= {goal})")
    print(f"    dcm2niix -z i (-6)   {w6:7.2f} {c6:7.2f}   {w / w6:9.2f} {c / c6:9.2f}")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=("a", "b"), default=None)
    args = parser.parse_args(argv)
    from imaging.synth import write_ct_series, write_many_small_series

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only in (None, "a"):
            ct = work / "ct-export"
            if not ct.exists():
                write_ct_series(ct, shape=(512, 512, args.slices))
            bench("a", ct, work, args.repeat, args.workers, 1.5)
        if args.only in (None, "b"):
            mr = work / "mr-export"
            if not mr.exists():
                write_many_small_series(mr, n_files=args.files)
            bench("b", mr, work, args.repeat, args.workers, 2.0)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
