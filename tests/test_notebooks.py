"""The research notebooks in ``notebooks/``: each one runs end to end in smoke mode, and each is
committed without outputs.

Every ``notebooks/*.ipynb`` is picked up, so a notebook added later is tested too. Smoke mode
(``SMOKE=1`` in the kernel's environment) is each notebook's own promise to shrink its sizes and
step counts to seconds; a full run (``SMOKE`` unset) is what produces ``notebooks/figures/``.
"""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
SMOKE_LINE = 'SMOKE = os.environ.get("SMOKE", "0") == "1"'

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])


@by_name
def test_notebook_is_committed_clean(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    dirty = [
        index
        for index, cell in enumerate(code)
        if cell.get("outputs") or cell.get("execution_count") is not None
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} (counting code cells from 0) hold outputs or execution "
        "counts; clear them before committing, e.g. `jupyter nbconvert --clear-output --inplace "
        f"notebooks/{path.name}`"
    )
    assert code and SMOKE_LINE in code[0].source, (
        f"{path.name}: the first code cell must read `{SMOKE_LINE}` and shrink the notebook's "
        "sizes when it is true, so that this test can run it in seconds"
    )


@by_name
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    # The kernel inherits this process's environment, so it sees SMOKE=1.
    monkeypatch.setenv("SMOKE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed in smoke mode:\n{err}", pytrace=False)
