"""Execute every notebook in notebooks/ headless (nbclient, python3 kernel of this interpreter), so they cannot rot.

The notebooks pick the offline model with ``m3_rag.cli.offline_model()`` and assert on their own results.
The eval cache goes to a temporary folder (``M3_RAG_CACHE``), never to the user's home.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
NEEDS = {"langchain_rag": "langchain_core", "llamaindex_rag": "llama_index.core", "evaluate": "matplotlib"}


def test_the_four_notebooks_exist():
    assert {p.stem for p in ALL} >= {"quickstart", "langchain_rag", "llamaindex_rag", "evaluate"}


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernelspec named python3 that runs *this* interpreter (so the venv's m3_rag is the one imported)."""
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path_factory.mktemp("jupyter")
    spec_dir = prefix / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (tests)",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix) + os.pathsep + os.environ.get("JUPYTER_PATH", ""))
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
        yield "python3"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs(path: Path, kernel_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    module = NEEDS.get(path.stem)
    if module is not None:
        pytest.importorskip(module)
    monkeypatch.setenv("M3_RAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book,
        timeout=600,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError with the cell and traceback on failure
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # no stray noise: tqdm's missing-widget warning or transformers' loading bar
    texts = [str(o.get("text", "")) for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [t for t in texts if "TqdmWarning" in t or "IProgress not found" in t or "Loading weights" in t]
