"""Every chapter's papermill parameters cell declares exactly the parameters its configuration accepts, so the
two cannot drift apart (a validated field no chapter exposes, or a declared name the config rejects)."""

import dataclasses
import importlib
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from bnlib import book, config

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = [d for d in book.notebook_documents(ROOT) if d != book.toc_documents(ROOT)[0] and d != "all_measurements"]


def accepted_parameters(document: str) -> set[str]:
    """What the cell after the parameters cell validates: ``config.load(profile)`` alone, or the experiment
    config plus the chapter's ``extras`` dataclass."""
    cells = [c for c in nbformat.read(ROOT / f"{document}.ipynb", as_version=4).cells if c.cell_type == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    validating = cells[index + 1].source
    if re.search(r"config\.load\(profile\)", validating):
        return {"profile"}
    names = {"profile"} | {f.name for f in dataclasses.fields(config.ExperimentConfig)}
    extras = re.search(r"extras=(\w+)\.(\w+)", validating)
    if extras:
        names |= {f.name for f in dataclasses.fields(getattr(importlib.import_module(f"bnlib.{extras[1]}"), extras[2]))}
    return names


@pytest.mark.parametrize("document", CHAPTERS)
def test_parameters_cell_declares_exactly_what_the_config_accepts(document):
    declared = set(papermill.inspect_notebook(str(ROOT / f"{document}.ipynb")))
    accepted = accepted_parameters(document)
    assert declared == accepted, f"missing: {sorted(accepted - declared)}, not accepted: {sorted(declared - accepted)}"
