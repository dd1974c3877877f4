"""`imaging ingest` of a plain export never imports pydicom: its import is 0.5-0.8 s of every run's
start-up (the Philips benchmark case takes ~4 s in all), and the fast header reader needs none of it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from imaging.synth.bench import write_philips_export

# The real command line (config composition and the ingest options included), run in a fresh process
# that reports which modules it ended with.
_RUN = """
import sys
from imaging.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("PYDICOM_IMPORTED=" + str(any(m == "pydicom" or m.startswith("pydicom.") for m in sys.modules)))
sys.exit(code)
"""


def test_ingest_of_a_plain_export_never_imports_pydicom(tmp_path: Path) -> None:
    export, out = tmp_path / "export", tmp_path / "dataset"
    # Real Philips classic headers (Real World Value Mapping, private sequences): the fast path.
    assert write_philips_export(export, n_files=6, slices=3, matrix=8) == 6
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, "ingest", f"input_dir={export}", f"output_dir={out}", "demo_key=true",
         "progress=false", f"paths.root_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PYDICOM_IMPORTED=False" in proc.stdout, proc.stdout[-2000:]
    with open(out / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # The same run ingested both series (so the check above covers a whole ingest, not a refusal).
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["shape"] for r in rows} == {"8x8x3"}
