"""Every chapter executes at the smoke profile and the book builds with warnings as errors."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from bnlib import book

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = book.notebook_documents(ROOT)


@pytest.mark.parametrize("document", NOTEBOOKS)
def test_notebook_in_git_has_no_outputs_and_a_parameters_cell(document):
    notebook = nbformat.read(ROOT / f"{document}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    if document != book.toc_documents(ROOT)[0]:
        assert len(tagged) == 1, "one cell tagged `parameters`"
        after = code[tagged[0] + 1].source
        assert "config.load(" in after, "the cell after the parameters validates them"


def test_cli_rejects_unknown_parameter_before_starting_a_kernel():
    completed = subprocess.run(
        [sys.executable, "-m", "bnlib", "run", "data_and_models", "-p", "bacth_size", "64"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "'bacth_size'" in completed.stderr and "batch_size" in completed.stderr


def test_cli_rejects_unknown_chapter():
    completed = subprocess.run([sys.executable, "-m", "bnlib", "run", "memorisation"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "memorization" in completed.stderr


def test_bad_value_fails_in_the_validation_cell(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(ROOT / "chapters/data_and_models.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"profile": "smoke", "norms": "batch,instance"},
                                   cwd=str(ROOT / "chapters"), progress_bar=False)
    assert "'norms'" in str(error.value) and "allowed values" in str(error.value)


@pytest.mark.slow
def test_every_chapter_executes_at_smoke_and_the_book_builds_strictly(smoke_site):
    build_dir = Path(os.environ["BNLIB_BUILD"])
    html = smoke_site  # book.book("smoke", build_dir, strict=True): built once per session (conftest.py)
    for document in book.toc_documents(ROOT):
        page = html / f"{document}.html"
        assert page.exists(), page
    intro = (html / "intro.html").read_text()
    assert "test_accuracy_same_schedule" in intro  # the headline table is filled from the run
    # re-running finds everything up to date
    for document in NOTEBOOKS:
        _, ran = book.execute(document, {"profile": "smoke"} if document != "intro" else {}, build_dir,
                              root=ROOT, progress=False)
        assert not ran, document
