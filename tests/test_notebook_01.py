"""notebooks/01-explore-scans.ipynb runs headless, top to bottom, on a tiny generated dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from nbclient import NotebookClient

from scanml.synth import generate_dataset

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01-explore-scans.ipynb"


class _ThisInterpreter(KernelSpecManager):
    """Resolves every kernel name to ipykernel on the interpreter running the tests.

    A "python3" kernelspec found elsewhere on the machine (a system Jupyter,
    another venv) could start a Python without scanml; this needs no
    ``ipykernel install`` step either.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python ({sys.executable})",
            language="python",
            resource_dir=str(NOTEBOOK.parent),
        )


def test_notebook_runs_on_a_tiny_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "synth"
    generate_dataset(data, 6, seed=3, workers=1, progress=False)
    monkeypatch.setenv("SCANML_DATA", str(data))
    # The inline backend, not the suite's Agg: the figures must reach the notebook's outputs.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook with its outputs stripped"
    )
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # scans, histograms, dual-energy scatter, contrasts
