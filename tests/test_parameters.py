"""Every chapter's papermill parameters cell declares exactly the parameters its configuration accepts, so the
two cannot drift apart (a validated field no chapter exposes, or a declared name the config rejects)."""

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from bnlib import book, chapter

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = [d for d in book.notebook_documents(ROOT) if d != book.toc_documents(ROOT)[0] and d != "all_measurements"]


def accepted_parameters(document: str) -> set[str]:
    """What the chapter validates: ``chapter.accepted_parameters`` for a measuring chapter (its cell after the
    parameters cell calls ``chapter.start``), ``{"profile"}`` for a page that calls ``config.load(profile)``."""
    name = document.split("/")[-1]
    cells = [c for c in nbformat.read(ROOT / f"{document}.ipynb", as_version=4).cells if c.cell_type == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    validating = cells[index + 1].source
    if re.search(r"config\.load\(profile\)", validating):
        return {"profile"}
    assert f'chapter.start("{name}", globals(), _names_before' in validating, validating
    return chapter.accepted_parameters(name)


@pytest.mark.parametrize("document", CHAPTERS)
def test_parameters_cell_declares_exactly_what_the_config_accepts(document):
    declared = set(papermill.inspect_notebook(str(ROOT / f"{document}.ipynb")))
    accepted = accepted_parameters(document)
    assert declared == accepted, f"missing: {sorted(accepted - declared)}, not accepted: {sorted(declared - accepted)}"


@pytest.mark.parametrize("name", list(chapter.CHAPTER_MODULES))
def test_parameters_cell_is_the_generated_one(name):
    """The cell is generated from the dataclasses (``python -m bnlib params <chapter> --write-cell``): one source
    for the name, the doc and the allowed values of every parameter."""
    cell = next(c for c in nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    assert cell.source == chapter.parameters_cell(name), f"run: python -m bnlib params {name} --write-cell"


def test_a_doc_with_an_equals_sign_is_refused(monkeypatch):
    import dataclasses as dc

    @dc.dataclass(frozen=True)
    class Bad:
        x: int = dc.field(default=0, metadata={"doc": "0 = automatic"})

    monkeypatch.setattr(chapter, "params_class", lambda name: Bad)
    with pytest.raises(ValueError, match="'x' contains '='"):
        chapter.parameters_cell("memorization")
