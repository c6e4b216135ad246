"""One cache policy: the key of every stored result holds the source of every bnlib module that decides it."""

import ast
import shutil
from pathlib import Path

import pytest

from bnlib import results

PACKAGE = Path(results.__file__).resolve().parent


@pytest.fixture()
def package_copy(tmp_path):
    copy = tmp_path / "bnlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize("kind, module", [("run", "runs"), ("zoo", "zoo"), ("influence_track", "influence"),
                                          ("mia measurement", "mia"), ("ablation_point", "ablations")])
def test_editing_any_module_that_decides_a_result_changes_its_key(package_copy, kind, module):
    code = results.code_of(module, root=package_copy)
    assert f"{module}.py" in code and "train.py" in code and "data.py" in code
    config = {"seed": 0}
    before = results.entry_key(kind, config, code, root=package_copy)
    for name in code:
        path = package_copy / name
        edited = path if path.is_file() else sorted(path.rglob("*.py"))[0]
        original = edited.read_text()
        edited.write_text(original + "\n# an edit\n")
        assert results.entry_key(kind, config, code, root=package_copy) != before, f"{name} is not in the key"
        edited.write_text(original)
    assert results.entry_key(kind, config, code, root=package_copy) == before
    # a module that decides nothing stored (figures) leaves the key alone
    (package_copy / "plots.py").write_text((package_copy / "plots.py").read_text() + "\n# restyled\n")
    assert results.entry_key(kind, config, code, root=package_copy) == before


def test_the_closure_follows_imports_through_modules_and_subpackages(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("from . import b\n")
    (root / "b.py").write_text("from .sub import engine\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "engine.py").write_text("from ..c import thing\n")
    (root / "c.py").write_text("from . import results\nthing = 1\n")
    (root / "results.py").write_text("")
    (root / "d.py").write_text("")
    assert results.code_of("a", root=root) == ("a.py", "b.py", "c.py", "sub")
    before = results.code_hash(results.code_of("a", root=root), root=root)
    (root / "sub" / "engine.py").write_text("from ..c import thing\nx = 2\n")
    assert results.code_hash(results.code_of("a", root=root), root=root) != before
    with pytest.raises(FileNotFoundError, match="'missing.py'"):
        results.code_hash(("missing.py",), root=root)


def test_every_cache_entry_in_bnlib_names_the_code_that_decides_it():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("Entry", "cached") and getattr(node.func.value, "id", "") == "results":
                calls.append((path.name, node))
    assert len(calls) >= 4
    for name, call in calls:
        code = [k.value for k in call.keywords if k.arg == "code"]
        assert code, f"{name}: results.{call.func.attr}(...) without code="
        assert isinstance(code[0], ast.Call) and getattr(code[0].func, "attr", "") == "code_of", name
