"""Every notebook in notebooks/ runs top to bottom in a fresh kernel.

The notebooks are committed without outputs; this is where they are executed. Each runs in
a new `python3` kernel started from this interpreter (jupyter_client replaces the kernel
spec's `python` with `sys.executable`), with notebooks/ as its working directory.
"""

import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def execute(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  client = NotebookClient(
      notebook,
      timeout=CELL_TIMEOUT_S,
      kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  return client.execute()


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 5, f"expected the five notebooks in {NOTEBOOK_DIR}, found {NOTEBOOKS}"


def test_kernel_runs_this_interpreter():
  # The notebooks must see the same environment (and the same rmsprop_optax) as the tests.
  notebook = nbformat.v4.new_notebook()
  notebook.cells.append(nbformat.v4.new_code_cell("import sys, os; print(sys.prefix); print(os.getcwd())"))
  output = execute(notebook).cells[0].outputs[0]["text"].split("\n")
  assert pathlib.Path(output[0]).resolve() == pathlib.Path(sys.prefix).resolve()
  assert pathlib.Path(output[1]).resolve() == NOTEBOOK_DIR


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
  notebook = nbformat.read(path, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      f"{path.name} is committed with outputs; clear them (the test suite executes it)."
  )
  execute(notebook)  # raises CellExecutionError, naming the cell, if any cell fails
