"""docs/tutorial.ipynb runs top to bottom in a fresh kernel (any cell raising fails the test)
and tells the story it claims; the copy in the repository carries no outputs."""

import json
import os
import shutil
import sys

import pytest

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                        "tutorial.ipynb")


def cell_text(cell):
    """The text a code cell printed or displayed (its plain-text representations)."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def test_the_committed_notebook_has_no_outputs():
    with open(NOTEBOOK, encoding="utf-8") as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 8                                    # the eight steps at least
    for c in code:
        assert c["outputs"] == [] and c["execution_count"] is None, "".join(c["source"])[:80]
    assert "widgets" not in nb["metadata"]


def test_the_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # A kernelspec of our own, found first on JUPYTER_PATH, runs this very interpreter (the
    # venv's), whatever kernels the machine has installed.
    spec_dir = tmp_path / "kernels" / "tinygrad-rnn-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tinygrad-rnn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")                  # never an interactive window
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="tinygrad-rnn-test", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                                         # CellExecutionError if a cell raises

    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "\n".join(cell_text(c) for c in code)
    assert "the hand loop gives the same final state: True" in printed
    assert "sum over t of the step terms == W_hh.grad: True" in printed
    assert printed.count("max |tape - formula| = 0.0e+00") == 3
    assert "check_cell: every property holds for MGUCell" in printed
    mse = {line.split(":")[0].strip(): float(line.split("test mse")[1].split()[0])
           for line in printed.splitlines() if "test mse" in line}
    assert mse["RNN"] > 0.1 and mse["LSTM"] < 0.05 and mse["GRU"] < 0.05     # baseline 0.167

    kinds = [set(out.get("data", {})) for c in code for out in c.outputs]
    assert sum("text/html" in k for k in kinds) >= 4         # tensor, trace, ledger, gradient flow
    assert sum("image/png" in k for k in kinds) >= 2         # the two plots
    if shutil.which("dot"):
        assert any("image/svg+xml" in k for k in kinds)      # the tape, drawn
