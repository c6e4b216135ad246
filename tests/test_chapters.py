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
    if not book.is_result_page(document, ROOT):
        assert len(tagged) == 1, "one cell tagged `parameters`"
        after = code[tagged[0] + 1].source
        assert "chapter.start(" in after or "config.load(" in after, "the cell after the parameters validates them"


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
    assert "test_accuracy_same_schedule" in (html / "all_measurements.html").read_text()  # filled from the run
    assert "What we found" in (html / "intro.html").read_text()
    # re-running finds everything up to date
    for document in NOTEBOOKS:
        _, ran = book.execute(document, book.book_parameters(document, "smoke", ROOT), build_dir, root=ROOT,
                              progress=False, result_set="smoke")
        assert not ran, document


@pytest.mark.slow
def test_a_run_at_other_parameters_leaves_the_book_and_the_report_unchanged(smoke_site):
    """After the smoke book: one chapter at other parameters writes beside the book (its own result set),
    and the report, the landing page's inputs and the chapter's executed copy in the book are unchanged."""
    from bnlib import report, results

    build_dir = Path(os.environ["BNLIB_BUILD"])
    chapter = "chapters/data_and_models"
    book_copy = book.executed_path(chapter, build_dir, "smoke")
    before = {"report": report.text(report.headline(results.read_summaries("smoke")), "smoke"),
              "summary": results.summary_path("data_and_models", "smoke").read_bytes(),
              "executed": book_copy.read_bytes()}
    leftover = book_copy.with_name(f".{book_copy.name}.999999999.running.ipynb")  # as a killed run leaves it
    leftover.write_text("{}")
    parameters = {"profile": "smoke", "epochs": "1"}
    custom_set = book.run_result_set(chapter, parameters, ROOT)
    completed = subprocess.run([sys.executable, "-m", "bnlib", "run", "data_and_models", "--profile", "smoke",
                                "-p", "epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert custom_set != "smoke" and f"result set: {custom_set}" in completed.stdout
    assert results.read_summaries(custom_set)["data_and_models"]["config"]["epochs"] == 1
    assert book.executed_path(chapter, build_dir, custom_set).exists()
    after = {"report": report.text(report.headline(results.read_summaries("smoke")), "smoke"),
             "summary": results.summary_path("data_and_models", "smoke").read_bytes(),
             "executed": book_copy.read_bytes()}
    assert after == before
    # the book's copy and the landing page (which reads only the book's set) are still up to date
    for document, parameters in ((chapter, {"profile": "smoke"}), ("intro", {})):
        _, ran = book.execute(document, parameters, build_dir, root=ROOT, progress=False, result_set="smoke")
        assert not ran, document
    assert not leftover.exists(), "a killed run's leftover stays in the book's folder"
    completed = subprocess.run([sys.executable, "-m", "bnlib", "report"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120, env={**os.environ, "BNLIB_BUILD": str(build_dir)})
    assert completed.stdout.strip() == before["report"]  # `report` defaults to the book's set
