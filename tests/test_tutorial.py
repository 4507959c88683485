"""docs/tutorial.ipynb runs top to bottom, as a learner would run it, and is committed without outputs."""

from __future__ import annotations

import time

import nbclient
import nbformat
import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
# The promise: at most 5 minutes on a 2-core CPU (measured 38 to 63 s on a shared 2-core
# machine, 2026-12-01: docs/dashboards.md, The tutorial notebook).
BUDGET_S = 300


@pytest.mark.slow  # a 3,000-step training inside: 38-63 s measured on a 2-core CPU
def test_tutorial_notebook_runs_without_an_error_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    # Raises CellExecutionError, naming the cell, at the first cell that fails.
    nbclient.NotebookClient(
        notebook, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    elapsed = time.perf_counter() - start
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    assert elapsed < BUDGET_S, f"the tutorial took {elapsed:.0f} s"
    # It printed the official test score.
    printed = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "test accuracy over 10,000 digits" in printed


def test_tutorial_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
