"""The whole pipeline on the canary export, then `imaging audit` over every output: zero hits.

synth -> ingest -> train (the shipped demo_seg, shrunk) -> infer (registered model,
SEG + NIfTI + report) -> deid; each through its real CLI in a fresh process. Then
the audit looks for the canary token, the manifest's original values (names, IDs,
dates, times, UIDs) and the link tables' originals in the dataset, predictions,
de-identified copy, run directories, Hydra logs and the MLflow store (params, tags,
run names, metric names, artifacts, registered models).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imaging.apps.audit import main as audit_main
from imaging.audit import build_needles, scan_mlflow, scan_paths
from imaging.synth.canaries import CANARY_TOKEN
from tests.fixtures.train_data import TINY

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def imaging(*args: str, root: Path, ok: tuple[int, ...] = (0,)) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMAGING_ROOT": str(root)}
    env.pop("IMAGING_DEID_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "imaging", *args, f"paths.root_dir={root}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode in ok, (
        f"imaging {args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phi-pipeline")
    p = {
        "root": root, "export": root / "export", "dataset": root / "dataset", "pred": root / "pred",
        "deid": root / "deid", "links": root / "hospital" / "deid_links.csv",
    }  # fmt: skip
    imaging("synth", f"output_dir={p['export']}", "subjects=3", "seed=0", root=root)
    # fail_on_error=false: the tricky cases of the export are ingest errors by design.
    imaging("ingest", f"input_dir={p['export']}", f"output_dir={p['dataset']}", "demo_key=true", "workers=1",
            "progress=false", "fail_on_error=false", root=root)  # fmt: skip
    imaging("train", *TINY, f"data.dataset_dir={p['dataset']}", root=root)
    imaging("infer", "model=models:/demo_seg@candidate", f"input={p['export']}", f"output_dir={p['pred']}",
            "demo_key=true", root=root)  # fmt: skip
    imaging("deid", f"input_dir={p['export']}", f"output_dir={p['deid']}", "demo_key=true",
            f"link_table={p['links']}", "progress=false", root=root)  # fmt: skip
    return p


def test_every_output_and_the_mlflow_store_audit_clean(pipeline: dict[str, Path]) -> None:
    p = pipeline
    root = p["root"]
    manifest = p["export"] / "manifest.json"
    tables = [
        p["links"],
        Path(f"{p['dataset']}.private") / "links.csv",
        Path(f"{p['pred']}.private") / "links.csv",
    ]
    tables = [t for t in tables if t.is_file()]
    assert len(tables) >= 2
    # The export's own folder names (patient-named folders) are needles too.
    needles = build_needles([CANARY_TOKEN], tables, [manifest], [p["export"]])
    # Sanity: the needles do find the PHI where it is supposed to be (the export, the private side).
    assert scan_paths([p["export"] / "DICOMDIR"], needles)
    assert scan_paths([tables[0]], needles)
    outputs = [p["dataset"], p["pred"], p["deid"], root / "runs", root / "logs"]
    outputs = [o for o in outputs if o.exists()]
    assert {p["dataset"], p["pred"], p["deid"]} <= set(outputs)
    assert any(p["pred"].rglob("seg.dcm")) and any(p["deid"].rglob("*.dcm"))
    hits = scan_paths(outputs, needles)
    assert hits == [], hits[:30]
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    mlflow_hits = scan_mlflow(uri, needles)
    assert mlflow_hits == [], mlflow_hits[:30]
    args = [str(o) for o in outputs] + ["--mlflow", uri, "--manifest", str(manifest), "--export", str(p["export"])]
    for table in tables:
        args += ["--link-table", str(table)]
    assert audit_main(args) == 0
