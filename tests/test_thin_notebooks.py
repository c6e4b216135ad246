"""Chapter notebooks are thin: narrative + calls into bnlib + figures. Logic lives in bnlib, where tests see it.

Every code cell holds at most ``MAX_LINES`` lines and defines no function, class or lambda. The parameters
cell is the one exception to the length: it is a declaration list, generated from the configuration
(tests/test_parameters.py checks it is), with no logic.
"""

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("chapters/*.ipynb")) + sorted(ROOT.glob("*.ipynb"))
MAX_LINES = 15


def code_cells(path: Path):
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            yield index, cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short(path):
    long = [(index, len(cell.source.splitlines())) for index, cell in code_cells(path)
            if "parameters" not in cell.metadata.get("tags", []) and len(cell.source.splitlines()) > MAX_LINES]
    assert not long, f"{path.name}: cells (index, lines) over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_define_no_functions(path):
    found = []
    for index, cell in code_cells(path):
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                found.append((index, type(node).__name__, getattr(node, "name", "lambda")))
    assert not found, f"{path.name}: definitions in cells (index, kind, name): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_only_assignments_of_literals(path):
    for _, cell in code_cells(path):
        if "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.dump(node)[:120]
