"""Imports flow one way (docs/architecture.md, "Layout"): every import of every module, at any
depth (function-level and TYPE_CHECKING imports included), checked against the house rules.

- below apps: nothing imports imaging.apps or imaging.cli
- only apps (and pipelines themselves) import imaging.pipelines
- engine (loops only): not pipelines, launch, tracking, selection, federated, review
- dicom (reading DICOM only): not deid, engine, data, tracking, pipelines; not torch, mlflow, monai
- tracking (the MLflow adapter only): not engine, selection, launch, pipelines, data
- data (catalog -> MONAI datasets): not engine, tracking, pipelines, launch
- plan (the training config checked -> TrainPlan, run identity; below pipelines, federated and
  launch, which all use it): not tracking, launch, selection, federated, review, pipelines
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "imaging"
NEVER = {
    "engine": ("imaging.pipelines", "imaging.launch", "imaging.tracking", "imaging.selection",
               "imaging.federated", "imaging.review"),
    "dicom": ("imaging.deid", "imaging.engine", "imaging.data", "imaging.tracking", "imaging.pipelines",
              "torch", "mlflow", "monai"),
    "tracking": ("imaging.engine", "imaging.selection", "imaging.launch", "imaging.pipelines", "imaging.data"),
    "data": ("imaging.engine", "imaging.tracking", "imaging.pipelines", "imaging.launch"),
    "plan": ("imaging.tracking", "imaging.launch", "imaging.selection", "imaging.federated", "imaging.review",
             "imaging.pipelines"),
}
# Top-level modules that sit above every layer (the command line and the demo script).
ENTRY_MODULES = ("cli", "__main__", "demo", "train")  # train: `python -m imaging.train`, as torchrun starts it


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _violations() -> list[str]:
    bad = []
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts  # ("imaging", "engine", "loops")
        room = parts[1] if len(parts) > 2 else ""
        top = parts[1]
        for line, name in _imports(ast.parse(f.read_text(encoding="utf-8"))):
            def under(prefix: str, name: str = name) -> bool:
                return name == prefix or name.startswith(prefix + ".")

            why = None
            if room != "apps" and top not in ENTRY_MODULES and (under("imaging.apps") or under("imaging.cli")):
                why = "reaches up into the command layer"
            elif under("imaging.pipelines") and room not in ("apps", "pipelines") and top not in ENTRY_MODULES:
                why = "only apps call pipelines"
            elif room in NEVER and any(under(p) for p in NEVER[room]):
                why = f"{room}/ must not import it"
            if why:
                bad.append(f"{f.relative_to(PACKAGE.parent)}:{line}: imports {name} ({why})")
    return bad


def test_no_import_runs_against_the_layers() -> None:
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The walker finds imports inside functions and TYPE_CHECKING blocks (what hid the old ones)."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from imaging.deid import x\n"
                     "def f():\n    import imaging.pipelines.ingest\n")
    assert [n for _, n in _imports(tree)] == ["typing", "imaging.deid", "imaging.pipelines.ingest"]
