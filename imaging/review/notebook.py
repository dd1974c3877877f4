"""Notebook files: strip outputs before committing, inject parameters before executing.

Parameters follow papermill's convention: the first cell tagged ``parameters``
holds the defaults; an executor adds a cell tagged ``injected-parameters``
right after it that overrides them (replacing an earlier injected cell).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
# Metadata that records one execution (not the notebook): dropped when stripping.
_VOLATILE_NB_METADATA = ("widgets", "papermill", "execution")
_VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "papermill", "ExecuteTime")


def read(path: str | os.PathLike[str]) -> NotebookNode:
    return nbformat.read(str(path), as_version=4)


def parameters_index(nb: NotebookNode) -> int:
    """Index of the first code cell tagged ``parameters``.

    Raises:
        ValueError: no such cell.
    """
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return i
    raise ValueError(f"the notebook has no code cell tagged '{PARAMETERS_TAG}'")


def inject_parameters(nb: NotebookNode, params: Mapping[str, Any]) -> NotebookNode:
    """Add (or replace) the ``injected-parameters`` cell after the ``parameters`` cell, in place.

    Values are written with ``repr``, so they must be Python literals (str, int,
    float, bool, None, lists/dicts of those); paths are passed as ``str``.

    Raises:
        ValueError: no ``parameters`` cell, or a value whose repr is not a literal.
    """
    import ast

    lines = ["# Parameters injected for this execution"]
    for name, value in params.items():
        value = str(value) if isinstance(value, os.PathLike) else value
        text = repr(value)
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"parameter '{name}' = {text} is not a Python literal") from exc
        lines.append(f"{name} = {text}")
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    index = parameters_index(nb)
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(index + 1, cell)
    return nb


def strip_outputs(nb: NotebookNode) -> bool:
    """Remove outputs, execution counts and per-run metadata, in place. Returns True if anything changed."""
    changed = False
    for key in _VOLATILE_NB_METADATA:
        changed |= nb.metadata.pop(key, None) is not None
    for cell in nb.cells:
        for key in _VOLATILE_CELL_METADATA:
            changed |= cell.get("metadata", {}).pop(key, None) is not None
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            cell.outputs = []
            changed = True
        if cell.get("execution_count") is not None:
            cell.execution_count = None
            changed = True
    return changed


def dirty_cells(nb: NotebookNode) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def strip_file(path: str | os.PathLike[str]) -> bool:
    """Strip a notebook file in place (written only when something changed)."""
    nb = read(path)
    if not strip_outputs(nb):
        return False
    tmp = Path(path).with_suffix(".ipynb.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)
    return True


def outputs_of(nb: NotebookNode, mime: str) -> list[Any]:
    """Every output payload of a MIME type (``image/png``, ``text/html``...) over all code cells."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {})
            if mime in data:
                found.append(data[mime])
    return found
