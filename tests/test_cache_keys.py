"""One cache policy: the key of every stored result holds the source of every bnlib module that decides it."""

import ast
import importlib.util
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
    (root / "a.py").write_text("from . import b\nfrom .plots import label\n")
    (root / "b.py").write_text("from .sub import engine\n")
    (root / "sub" / "__init__.py").write_text("from .other import x\n")
    (root / "sub" / "engine.py").write_text("from ..c import thing\n")
    (root / "sub" / "other.py").write_text("x = 1\n")
    (root / "c.py").write_text("from . import results\nthing = 1\n")
    (root / "results.py").write_text("from . import d\n")
    (root / "plots.py").write_text("from . import d\nlabel = 'BN'\n")  # a reading module: neither kept nor followed
    (root / "d.py").write_text("")
    (root / "e.py").write_text("from .sub import x\nfrom pkg.c import thing\n")  # a name the package defines
    assert results.code_of("a", root=root) == ("a.py", "b.py", "c.py", "sub/engine.py")
    assert results.code_of("e", root=root) == ("c.py", "e.py", "sub/__init__.py", "sub/other.py")
    assert results.code_of("sub", root=root) == results.code_of("sub/__init__.py", root=root) == \
        ("sub/__init__.py", "sub/other.py")
    assert results.code_of("sub.engine", root=root) == ("c.py", "sub/engine.py")
    before = results.code_hash(results.code_of("a", root=root), root=root)
    (root / "sub" / "engine.py").write_text("from ..c import thing\nx = 2\n")
    assert results.code_hash(results.code_of("a", root=root), root=root) != before
    before = results.code_hash(results.code_of("a", root=root), root=root)
    (root / "sub" / "other.py").write_text("x = 3\n")  # a's code never imports sub's __init__
    assert results.code_hash(results.code_of("a", root=root), root=root) == before
    with pytest.raises(FileNotFoundError, match="'missing.py'"):
        results.code_hash(("missing.py",), root=root)
    with pytest.raises(ValueError, match="'module' got 'plots'"):
        results.code_of("plots", root=root)
    with pytest.raises(ValueError, match="'module' got 'missing'"):
        results.code_of("missing", root=root)


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


# ----------------------------------------------------------------------------- the measuring/reading boundary
# A cache key holds the source of the modules that *measure* (decide a stored value), never of the modules that
# *read* measurements (tables, glue, prose, figures, the website: ``results.is_reading``). The reference below
# resolves imports with Python's own rule (``importlib.util.resolve_name``), apart from ``results``.

# Known offenders, each to be removed by its module's owner (a fixed one fails the test until it leaves this list):
# (measuring module, what it imports or defines, why it is wrong).
KNOWN_OFFENDERS = {
    ("mia_eval.py", "prose in a keyed module: direction",
     "verdict words in a module every MIA measurement, ablation point and DP model is keyed on"),
}


def _module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _direct_imports(path: Path, files: dict[str, Path], root: Path = PACKAGE) -> set[str]:
    """Paths under ``root`` of the package's modules that ``path`` imports, resolved as Python does."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            for alias in node.names:
                name = f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                if name in files:
                    found.add(files[name].relative_to(root).as_posix())
        elif isinstance(node, ast.Import):
            found |= {files[a.name].relative_to(root).as_posix() for a in node.names if a.name in files}
    return found


def _measuring_modules(root: Path = PACKAGE) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                  if not results.in_no_key(p.relative_to(root).as_posix()))


def _reference_closure(start: str, root: Path = PACKAGE) -> set[str]:
    """What ``results.code_of(start)`` must be: ``start`` and every module reached by imports that pass only
    through modules in keys (plumbing and reading modules are neither included nor followed)."""
    files = _module_files(root)
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or results.in_no_key(name):
            continue
        seen.add(name)
        todo += sorted(_direct_imports(root / name, files, root))
    return seen


def test_the_reading_modules_are_the_tables_glue_prose_figures_and_site():
    reading = sorted(p.name for p in PACKAGE.glob("*.py") if results.is_reading(p.name))
    assert {"chapter.py", "book.py", "report.py", "plots.py", "figures.py", "cli.py", "mia_summary.py",
            "dp_tradeoff.py", "theory_derivation.py", "theory_cnn.py", "memorization_chapter.py", "ablation_report.py",
            "mia_plots.py"} <= set(reading)
    assert not {"zoo.py", "train.py", "influence.py", "mia.py", "dp.py", "stats.py"} & set(reading)
    assert not results.is_reading("persample/api.py")


@pytest.mark.parametrize("module", _measuring_modules())
def test_no_reading_module_is_in_or_behind_any_cache_key(module):
    """``code_of`` holds exactly the measuring modules reached through measuring modules: neither a reading
    module nor what only a reading module imports (the closure does not follow imports through them)."""
    code = set(results.code_of(module.removesuffix(".py")))
    assert not {name for name in code if results.in_no_key(name)}, code
    expected = _reference_closure(module)
    assert code == expected, (f"code_of({module!r}) holds {sorted(code - expected)} it should not and lacks "
                              f"{sorted(expected - code)}")


def test_measuring_modules_import_no_reading_module():
    files = _module_files()
    found = {(module, f"import {name}") for module in _measuring_modules()
             for name in _direct_imports(PACKAGE / module, files) if results.is_reading(name)}
    known = {(module, what) for module, what, _ in KNOWN_OFFENDERS if what.startswith("import ")}
    assert not found - known, f"new imports of reading modules from measuring modules: {sorted(found - known)}"
    assert not known - found, f"fixed: remove {sorted(known - found)} from KNOWN_OFFENDERS"


def _writes_prose(function: ast.FunctionDef) -> bool:
    """Whether ``function`` returns words (a string of two words or more) or composes a sentence (an f-string
    with three words or more), apart from error messages, warnings and progress bars."""
    def words(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return len(node.value.split())
        if isinstance(node, ast.JoinedStr):
            # a placeholder for each formatted value: f"model_{t}_weights" is one identifier, not two words
            return len("".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values).split())
        if isinstance(node, ast.BinOp):
            return max(words(node.left), words(node.right))
        if isinstance(node, ast.IfExp):
            return max(words(node.body), words(node.orelse))
        return 0

    exempt = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "warn"):
            exempt |= {id(n) for n in ast.walk(node)}
        if isinstance(node, ast.keyword) and node.arg == "desc":
            exempt |= {id(n) for n in ast.walk(node.value)}
    return any(isinstance(node, ast.Return) and node.value is not None and words(node.value) >= 2
               or isinstance(node, ast.JoinedStr) and words(node) >= 3
               for node in ast.walk(function) if id(node) not in exempt)


def _keyed_modules() -> set[str]:
    """Every module in the key of some cache entry: the closures of the modules that call ``results.code_of``."""
    starts = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "code_of" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                starts.add(node.args[0].value)
    # (ablations stores nothing of its own: its members are zoo members, keyed by zoo)
    assert {"runs", "zoo", "influence", "mia", "dp"} <= starts
    return {name for start in starts for name in results.code_of(start)}


def test_no_prose_in_a_module_that_is_in_a_cache_key():
    """Sentences and verdict words belong in reading modules: in a keyed module, rewording one retrains."""
    found = set()
    for name in sorted(_keyed_modules()):
        for path in sorted((PACKAGE / name).rglob("*.py")) if (PACKAGE / name).is_dir() else [PACKAGE / name]:
            found |= {(path.relative_to(PACKAGE).as_posix(), f"prose in a keyed module: {node.name}")
                      for node in ast.parse(path.read_text()).body
                      if isinstance(node, ast.FunctionDef) and _writes_prose(node)}
    known = {(module, what) for module, what, _ in KNOWN_OFFENDERS if what.startswith("prose ")}
    assert not found - known, f"new prose in keyed modules: {sorted(found - known)}"
    assert not known - found, f"fixed: remove {sorted(known - found)} from KNOWN_OFFENDERS"
