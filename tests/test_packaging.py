"""bnlib as a built wheel: every source file is in it and every module imports from it alone; pyproject declares
what bnlib imports; the book's fingerprint covers every source file."""

import ast
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from bnlib import book

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bnlib"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml", "IPython": "ipython", "myst_nb": "myst-nb",
                 "matplotlib_inline": "matplotlib-inline", "dask_jobqueue": "dask-jobqueue"}


def _sources(root: Path) -> list[str]:
    return sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*.py"))


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The wheel of a copy of the source tree (setuptools writes build/ and *.egg-info where it builds), unpacked
    into a folder as an installer would (a pure-Python wheel is a zip of the installed files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "bnlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("bnlib-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_every_source_file(wheel_site):
    assert _sources(wheel_site / "bnlib") == _sources(PACKAGE)
    assert "bnlib/persample/api.py" in _sources(wheel_site / "bnlib")


def test_every_module_imports_from_the_wheel_alone(wheel_site, tmp_path):
    """A fresh interpreter (-I: no PYTHONPATH, no current folder) with the wheel first on its path imports every
    module of every subpackage (``__main__`` apart: importing it runs the command line), each from the wheel,
    never from the source tree."""
    script = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(wheel_site)!r})
import bnlib
names = ["bnlib"] + [m.name for m in pkgutil.walk_packages(bnlib.__path__, "bnlib.") if m.name != "bnlib.__main__"]
print(json.dumps({{name: importlib.import_module(name).__file__ for name in names}}))
"""
    completed = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-4000:]
    files = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "bnlib.persample.api" in files and "bnlib.persample" in files
    expected = {p.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for p in _sources(PACKAGE)}
    assert set(files) == expected - {"bnlib.__main__"}
    outside = {name: file for name, file in files.items() if not Path(file).is_relative_to(wheel_site)}
    assert not outside, f"imported from outside the wheel: {outside}"


def _third_party_imports() -> set[str]:
    """Top-level names of every package bnlib imports, apart from the standard library and bnlib itself."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in ("bnlib", "__future__")}


def _declared(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
            for r in requirements}


def test_pyproject_declares_every_package_bnlib_imports():
    project = PYPROJECT["project"]
    declared = _declared(project["dependencies"])
    extras = {name: _declared(requirements) for name, requirements in project["optional-dependencies"].items()}
    needed = {DISTRIBUTIONS.get(name, name).lower() for name in _third_party_imports()}
    # the Dask engine (bnlib.engine) imports its packages only when a cluster is asked for
    assert needed - declared <= extras["cluster"], sorted(needed - declared - extras["cluster"])
    assert {"torch", "numpy", "opacus", "statsmodels"} <= declared
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["bnlib", "bnlib.*"]


def test_requires_python_is_the_version_readme_states():
    assert "Python 3.11" in (ROOT / "README.md").read_text()
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)


def test_the_books_fingerprint_covers_every_source_file(tmp_path):
    copy = tmp_path / "bnlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = book.code_fingerprint(copy)
    assert book.code_fingerprint(copy) == before
    for path in sorted(copy.rglob("*.py")):
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        assert book.code_fingerprint(copy) != before, f"{path.relative_to(copy)} is not in the fingerprint"
        path.write_text(original)
    assert book.code_fingerprint(copy) == before


def _lock() -> dict[str, str]:
    """requirements.lock as normalized name -> exact version."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip() and not set(version) & set("<>=!~*; "), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_requirement_at_a_version_it_allows():
    """Every package of requirements*.txt is in requirements.lock at an allowed version (so installing with the lock
    as constraints installs nothing unpinned at the top), and bnlib itself is not in it."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    assert "bnlib" not in pins and {"torch", "numpy", "pip", "setuptools"} <= set(pins)
    for name in ("requirements.txt", "requirements-lab.txt", "requirements-cluster.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                requirement = Requirement(line)
                pinned = pins.get(canonicalize_name(requirement.name))
                assert pinned is not None, f"{name}: {requirement.name} is not in requirements.lock (run make lock)"
                assert requirement.specifier.contains(pinned, prereleases=True), (name, line, pinned)


def test_the_lock_is_what_this_environment_runs():
    """The tests run with the locked versions (a venv made by `make test`): the packages bnlib imports match."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    pins = _lock()
    for name in ("torch", "numpy", "scipy", "scikit-learn", "statsmodels", "opacus", "matplotlib", "sympy"):
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == pins[canonicalize_name(name)], f"{name}: installed {installed}, locked {pins[name]}"
