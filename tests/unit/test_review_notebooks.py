"""The committed notebooks: outputs stripped, papermill-style parameters, injection and stripping tools."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from imaging.review.notebook import (
    INJECTED_TAG,
    dirty_cells,
    inject_parameters,
    outputs_of,
    parameters_index,
    read,
    strip_outputs,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED_PARAMS = {
    "01_explore_dataset.ipynb": {"dataset_dir"},
    "02_review_training.ipynb": {"tracking_uri", "experiment_name", "model_name", "set_alias", "alias_version",
                                 "write_descriptions"},
    "03_review_predictions.ipynb": {"predictions_dir", "dataset_dir", "private_dir", "secret_file", "demo_key"},
}


def _params(nb: nbformat.NotebookNode) -> dict[str, object]:
    tree = ast.parse(nb.cells[parameters_index(nb)].source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_all_three_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_stripped_and_valid(path: Path) -> None:
    nb = read(path)
    nbformat.validate(nb)
    assert dirty_cells(nb) == [], f"{path.name}: run scripts/strip_notebook_outputs.py before committing"
    assert all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert not any(INJECTED_TAG in c.get("metadata", {}).get("tags", []) for c in nb.cells)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_comes_first_with_literal_defaults(path: Path) -> None:
    nb = read(path)
    index = parameters_index(nb)
    assert index == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code"), "parameters must come first"
    params = _params(nb)  # literal_eval: every default is a plain literal
    assert EXPECTED_PARAMS[path.name] <= set(params)
    path_params = {k for k in params if k.endswith(("_dir", "_uri", "_file"))}
    assert all(params[k] is None for k in path_params), "paths default to None (resolved to the demo outputs)"
    if "set_alias" in params:
        assert params["set_alias"] is None, "executing the notebook must not move an alias unless asked"
        assert params["write_descriptions"] is False, "nor write to MLflow"


def test_inject_parameters_replaces_a_previous_injection() -> None:
    nb = read(REPO / "notebooks" / "02_review_training.ipynb")
    inject_parameters(nb, {"set_alias": "champion", "tracking_uri": Path("/x/y")})
    inject_parameters(nb, {"set_alias": "reviewed"})
    injected = [i for i, c in enumerate(nb.cells) if INJECTED_TAG in c.metadata.get("tags", [])]
    assert injected == [parameters_index(nb) + 1]
    assert nb.cells[injected[0]].source.splitlines()[1:] == ["set_alias = 'reviewed'"]
    nbformat.validate(nb)
    with pytest.raises(ValueError, match="'bad' = .* is not a Python literal"):
        inject_parameters(nb, {"bad": object()})
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"):
        inject_parameters(nbformat.v4.new_notebook(), {"a": 1})


def _dirty_copy(tmp_path: Path) -> Path:
    nb = read(NOTEBOOKS[0])
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.execution_count = 3
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "x"})]
    code.metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_strip_outputs(tmp_path: Path) -> None:
    path = _dirty_copy(tmp_path)
    nb = read(path)
    assert dirty_cells(nb) and outputs_of(nb, "image/png") == ["iVBORw0KGgo="]
    assert strip_outputs(nb) is True
    assert dirty_cells(nb) == [] and outputs_of(nb, "image/png") == []
    assert all("execution" not in c.metadata for c in nb.cells)
    assert strip_outputs(nb) is False
    assert nb.cells[parameters_index(nb)].source == read(NOTEBOOKS[0]).cells[parameters_index(nb)].source


def test_strip_script_check_and_fix(tmp_path: Path) -> None:
    path = _dirty_copy(tmp_path)
    script = [sys.executable, str(REPO / "scripts" / "strip_notebook_outputs.py")]
    check = subprocess.run([*script, "--check", str(path)], capture_output=True, text=True, cwd=REPO)
    assert check.returncode == 1 and "dirty.ipynb" in check.stdout
    fix = subprocess.run([*script, str(path)], capture_output=True, text=True, cwd=REPO)
    assert fix.returncode == 0 and "stripped" in fix.stdout
    assert subprocess.run([*script, "--check", str(path)], cwd=REPO).returncode == 0
    assert subprocess.run([*script, "--check"], cwd=REPO).returncode == 0  # the committed notebooks
