"""Benchmark (not a test): `imaging deid` vs dicognito on the same synthetic export, in one run.

Both run in this process over the same files, each reading every file with
pydicom, de-identifying it and writing it to its own output folder (ours also
walks the tree, checks pixel lengths and writes the audit log; dicognito gets
the list of files ready-made). Prints files/s of each and the ratio
(ours / dicognito throughput, higher is better for us). Best of ``--repeat``.

    .venv/bin/python benchmarks/deid.py [--export DIR] [--subjects 4] [--repeat 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def ours(export: Path, out: Path) -> int:
    from imaging.deid.apply import DeidOptions
    from imaging.deid.export import deidentify_export
    from imaging.keys import Pseudonymizer

    summary = deidentify_export(
        export, out, Pseudonymizer.from_config(demo_key=True), DeidOptions(), progress=False
    )
    return summary.written + summary.withheld


def theirs(files: list[Path], out: Path) -> int:
    import pydicom
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="benchmark")
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, path in enumerate(files):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # non-DICOM in the export, as ours skips them
            continue
        anonymizer.anonymize(ds)
        ds.save_as(out / f"{i:06d}.dcm")
        n += 1
    return n


def timed(fn, *args: object) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    out = args[-1]
    shutil.rmtree(out, ignore_errors=True)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--export", type=Path, default=None, help="an existing export (default: synthesise one)"
    )
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    export = args.export
    if export is None:
        from imaging.synth import generate

        export = work / "export"
        if not (export / "manifest.json").exists():
            generate(export, subjects=args.subjects, seed=0, cases="all", overwrite=True)
    files = sorted(
        p for p in export.rglob("*") if p.is_file() and p.name not in ("DICOMDIR", "manifest.json")
    )
    # Warm both code paths (imports, pydicom dictionaries) before timing.
    ours_once = timed(ours, export, work / "warm-ours")
    theirs_once = timed(theirs, files[:5], work / "warm-theirs")
    del ours_once, theirs_once
    # Alternate the two so that load from other processes hits both alike; best of each.
    runs_ours, runs_theirs = [], []
    for _ in range(args.repeat):
        runs_ours.append(timed(ours, export, work / "ours"))
        runs_theirs.append(timed(theirs, files, work / "theirs"))
    (t_ours, n_ours), (t_theirs, n_theirs) = min(runs_ours), min(runs_theirs)
    print(f"export: {export} ({len(files)} files)")
    print(
        f"  imaging deid  {n_ours:6d} DICOM files  {t_ours:7.2f} s  {n_ours / t_ours:8.1f} files/s"
    )
    print(
        f"  dicognito     {n_theirs:6d} DICOM files  {t_theirs:7.2f} s  {n_theirs / t_theirs:8.1f} files/s"
    )
    print(
        f"  throughput ratio (imaging / dicognito): {(n_ours / t_ours) / (n_theirs / t_theirs):.2f}"
    )


if __name__ == "__main__":
    main()
