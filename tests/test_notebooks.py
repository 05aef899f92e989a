"""The notebooks run headless, top to bottom, on the session's tiny dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from nbclient import NotebookClient

from conftest import CONFIGS, REPO, TrainedModel

NOTEBOOKS = REPO / "notebooks"


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
            resource_dir=str(NOTEBOOKS),
        )


def run_notebook(
    name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> list[dict]:
    """Execute a committed notebook afresh in ``workdir``; return every cell output.

    Notebooks are committed with their outputs (readers see results without
    running them); the committed outputs are dropped here so that every
    output checked below comes from this run.
    """
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The inline backend, not the suite's Agg: the figures must reach the notebook's outputs.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
    client = NotebookClient(
        notebook, km=manager, timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def _images(outputs: list[dict]) -> list[dict]:
    return [o for o in outputs if "image/png" in o.get("data", {})]


def test_01_explore_scans(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_notebook(
        "01-explore-scans.ipynb", tmp_path, monkeypatch, {"SCANML_DATA": str(tiny_dataset)}
    )
    assert len(_images(outputs)) >= 4  # scans, histograms, dual-energy scatter, contrasts


@pytest.mark.slow
def test_02_train_and_compare(
    tiny_dataset: Path, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_notebook(
        "02-train-and-compare.ipynb",
        tmp_path,  # runs/ and mlruns/ land here, beside the test's MLflow store
        monkeypatch,
        {
            "SCANML_DATA": str(tiny_dataset),
            "SCANML_CONFIG": str(CONFIGS / "smoke.yaml"),
            "SCANML_BACKBONES": "resnet18,mobilenet_v3_large",
            "SCANML_EPOCHS": "1",
        },
    )
    assert len(_images(outputs)) >= 2  # learning curves, detection rate at FAR
    text = "".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs
    )
    assert "mobilenet_v3_large" in text and "resnet18" in text


@pytest.mark.slow
def test_03_cross_site(
    trained_model: TrainedModel, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_notebook(
        "03-cross-site.ipynb",
        tmp_path,
        monkeypatch,
        {
            "SCANML_DATA": str(trained_model.data_dir),  # antwerp + rotterdam
            "SCANML_CONFIG": str(CONFIGS / "smoke.yaml"),
            "SCANML_EPOCHS": "1",
            "SCANML_SANTOS_SCANS": "8",
            # the session's smoke model is the notebook's two-site model: trained once per suite
            "SCANML_BASE_MODEL": str(trained_model.bundle_dir),
        },
    )
    assert len(_images(outputs)) >= 1  # before / after
    text = "".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs
    )
    assert "Cross-site false alarms (threshold calibrated on antwerp)" in text
    assert "santos" in text and "parent:" in text
