"""A real notebook, run by a Jupyter kernel of this environment (nbclient + ipykernel): a Run, its plot, its
evaluation and a study show images (image/png) and HTML tables, not only text."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e '.[dev]')")

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent

CELLS = [
    f"""import sys; sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]
import numpy as np, cnnlab
from conftest import make_images
x, y = make_images(240, 16, classes=3); xt, yt = make_images(60, 16, classes=3, seed=7)
fast = dict(epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False)
run = cnnlab.train("cnn1", (x, y, xt, yt), class_names=["top", "trouser", "bag"], out="runs", **fast)""",
    "run",
    "paths = run.plot()",
    "ev = run.evaluate('val'); ev",
    "ev.plot_top_losses(8)",
    """cnnlab.study(["cnn1"], 1, (x, y, xt, yt), out="study", say=lambda s: None, **fast)""",
]


def write_kernel(folder: Path) -> str:
    """A kernelspec running this interpreter with this PYTHONPATH (not whatever `python3` a machine has)."""
    spec = folder / "kernels" / "cnnlab-test"
    spec.mkdir(parents=True)
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cnnlab tests", "language": "python", "env": {"PYTHONPATH": path}}))
    return "cnnlab-test"


def outputs(cell) -> tuple[set[str], str]:
    kinds, html = set(), ""
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        kinds |= set(data)
        html += data.get("text/html", "")
    return kinds, html


@pytest.mark.slow
def test_notebook_shows_images_and_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbclient.NotebookClient(notebook, kernel_name=write_kernel(tmp_path), timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    (tmp_path / "executed.ipynb").write_text(nbformat.writes(notebook))  # for a person to open
    cells = notebook.cells
    kinds, html = outputs(cells[1])  # the Run
    assert "text/html" in kinds and "<table>" in html and "data:image/png;base64," in html and "text/plain" in kinds
    kinds, _ = outputs(cells[2])  # run.plot(): its figures inline, as PNG
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for o in cells[2].outputs) == 3
    kinds, html = outputs(cells[3])  # the evaluation: per-class table and the confusion matrix
    assert "<table" in html and "trouser" in html and "data:image/png;base64," in html
    kinds, _ = outputs(cells[4])  # a figure returned by plot_top_losses
    assert "image/png" in kinds
    kinds, html = outputs(cells[5])  # the study
    assert "<table>" in html and "Accuracy over repeats" in html and "data:image/png;base64," in html
