"""Result cache keyed by a hash of the full configuration; atomic writes; chapter summaries.

Layout (under ``cache_root()``, default ``_build/cache``, or ``$BNLIB_CACHE``)::

    <kind>/<hash>/config.json        the configuration, code modules and package version behind the entry
    <kind>/<hash>/<name>.pt          tensors / plain Python values, read with weights_only=True
    summaries/<set>/<chapter>.json   headline metrics of a chapter per result set (profile + parameters)

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written entry; a resumed run finds what was finished.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    return Path(os.environ.get("BNLIB_CACHE", REPO_ROOT / "_build" / "cache"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return value


def config_hash(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-able configuration dict (key order does not matter)."""
    text = json.dumps(_jsonable(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(value), indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path, value: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(value, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def torch_load(path: Path) -> Any:
    """Load a cache entry or checkpoint safely (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# One policy for every cache entry: its key holds the source of every bnlib module that decides what is
# stored (the data draw, the networks, the training loop, the measurement), named by the code that creates
# the entry (``code_of``). Two kinds of module are never in a key, and ``code_of`` does not follow imports
# through them: the package's plumbing (``INFRASTRUCTURE``: caching itself, the version, the configuration,
# whose values go into the key as configuration, not as code) and the *reading* modules, which turn measured
# values into tables, glue, prose, figures and the website (``READING_MODULES`` and ``READING_SUFFIXES``).
# A measuring module imports no reading module (tests/test_cache_keys.py), so rewording a sentence or
# restyling a figure never retrains anything.
PACKAGE_ROOT = Path(__file__).resolve().parent
INFRASTRUCTURE = ("__init__.py", "__main__.py", "results.py", "config.py")
# The reading modules of the package (files directly under bnlib/): by name, and every file whose name ends
# with one of READING_SUFFIXES (a chapter's tables and glue, a report, figures).
READING_MODULES = ("book.py", "chapter.py", "cli.py", "dp_tradeoff.py", "figures.py", "metric_registry.py",
                   "mia_summary.py", "plots.py",
                   "report.py", "theory_cnn.py", "theory_derivation.py")
READING_SUFFIXES = ("_chapter.py", "_report.py", "_plots.py")


def is_reading(name: str) -> bool:
    """Whether ``name`` (a path under bnlib, ``"plots.py"``) is a reading module: tables, glue, prose, figures
    or the website, never in a cache key."""
    return "/" not in name and (name in READING_MODULES or name.endswith(READING_SUFFIXES))


def in_no_key(name: str) -> bool:
    """Whether ``name`` (a path under bnlib) is never part of a cache key: plumbing or a reading module."""
    return name in INFRASTRUCTURE or is_reading(name)


def _module_path(parts: list[str], root: Path) -> Path | None:
    """The file of the module named by ``parts`` under ``root`` (a package: its ``__init__.py``), else None."""
    target = root.joinpath(*parts)
    if (target / "__init__.py").is_file():
        return target / "__init__.py"
    return target.with_suffix(".py") if parts and target.with_suffix(".py").is_file() else None


def _imported_modules(path: Path, root: Path) -> set[str]:
    """The package's modules that ``path`` imports, as paths under ``root`` (``"zoo.py"``,
    ``"persample/api.py"``), resolved as Python resolves them: ``from .x import y`` is the file of ``x`` (or of
    its submodule ``y``), ``from . import x`` the file of ``x``, ``from .persample import api`` the file
    ``persample/api.py``, and a name a package defines its ``__init__.py``. Absolute imports of the package
    (``from bnlib.x import y``) count too."""
    found = set()
    package = list(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:
                if node.level - 1 > len(package):
                    continue
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == root.name:
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                target = _module_path([*base, alias.name], root) or _module_path(base, root)
                if target is not None:
                    found.add(target.relative_to(root).as_posix())
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name:
                    target = _module_path(alias.name.split(".")[1:], root)
                    if target is not None:
                        found.add(target.relative_to(root).as_posix())
    return found


def code_of(module: str, root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """The code whose source goes into the key of what ``module`` computes: ``module`` and every module of the
    package it imports, directly or through other measuring modules, as paths under ``root``.

    Imports are not followed through a module in no key (``in_no_key``: plumbing, reading modules), so what only
    a figure or a sentence needs never enters a key.

    Args:
        module: ``"zoo"``, ``"persample.api"`` (a module), ``"persample"`` (a package: its ``__init__.py``) or a
            path under ``root`` (``"persample/api.py"``).

    Raises:
        ValueError: ``module`` does not exist under ``root``, or is in no key (a reading module decides nothing).
    """
    start = _module_path(module.removesuffix(".py").replace("/", ".").split("."), root)
    if start is None:
        raise ValueError(f"Parameter 'module' got {module!r}: no such module under {root}.")
    start_name = start.relative_to(root).as_posix()
    if in_no_key(start_name):
        raise ValueError(f"Parameter 'module' got {module!r}, which is in no cache key (plumbing or a reading "
                         "module: results.INFRASTRUCTURE, results.is_reading); allowed: a measuring module.")
    todo, seen = [start_name], set()
    while todo:
        name = todo.pop()
        if name in seen or in_no_key(name):
            continue
        seen.add(name)
        todo += sorted(_imported_modules(root / name, root) - seen)
    return tuple(sorted(seen))


def code_hash(modules: tuple[str, ...], root: Path = PACKAGE_ROOT) -> str:
    """12-hex-digit hash of the source of ``modules`` (paths under ``root``, the bnlib folder); a folder
    stands for every ``.py`` file under it. Order does not matter; a missing module is an error."""
    files: list[Path] = []
    for name in sorted(set(modules)):
        path = root / name
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"Module {name!r} named in a cache key does not exist under {root}.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def entry_key(kind: str, config: dict[str, Any], code: tuple[str, ...], root: Path = PACKAGE_ROOT) -> str:
    """The folder name of an entry: a hash of its kind, configuration and the source of ``code``."""
    return config_hash({"kind": kind, **_jsonable(config), "code": code_hash(code, root)})


class Entry:
    """One cache folder for one (kind, configuration, code that decides it).

    Args:
        kind: the kind of result (``run``, ``zoo``, ...), also its folder under ``cache_root()``.
        config: everything that decides the result apart from code.
        code: the bnlib modules whose source decides the result (see ``code_hash``).
    """

    def __init__(self, kind: str, config: dict[str, Any], code: tuple[str, ...]):
        self.config = _jsonable(config)
        self.code = tuple(code)
        self.key = entry_key(kind, self.config, self.code)
        self.folder = cache_root() / kind / self.key
        meta = self.folder / "config.json"
        if not meta.exists():
            atomic_write_json(meta, {"kind": kind, "config": self.config, "bnlib_version": __version__,
                                     "code": {"modules": list(self.code), "hash": code_hash(self.code)}})

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Any:
        return torch_load(self.path(name))

    def save(self, name: str, value: Any) -> None:
        atomic_torch_save(self.path(name), value)

    def get_or_compute(self, name: str, compute: Callable[[], Any]) -> Any:
        """Return the stored value of ``name``, computing and storing it first if absent."""
        if self.has(name):
            return self.load(name)
        value = compute()
        self.save(name, value)
        return value


def cached(kind: str, config: dict[str, Any], compute: Callable[[], Any], code: tuple[str, ...],
           name: str = "result") -> Any:
    """Shorthand: ``Entry(kind, config, code).get_or_compute(name, compute)``."""
    return Entry(kind, config, code).get_or_compute(name, compute)


# ----------------------------------------------------------------------------- chapter summaries
# Summaries are kept per *result set*: one set per (profile, parameters) a chapter was run with. The book's
# set is named by its profile ("quick"); a run at other parameters gets "<profile>-<8 hex digits>", so it
# lands beside the book's numbers and never over them. ``book.execute`` tells the kernel its set through
# the environment variable below; a notebook run without it (plain papermill, Jupyter) names its set from
# the configuration it stores.

RESULT_SET_ENV = "BNLIB_RESULT_SET"


def result_set_name(profile: str, parameters: dict[str, Any] | None = None) -> str:
    """Name of the result set of a run: the profile alone for the book's parameters (``{"profile": p}``
    or none), else ``<profile>-<hash of the other parameters>``."""
    others = {k: v for k, v in (parameters or {}).items() if k != "profile"}
    return profile if not others else f"{profile}-{config_hash(others)[:8]}"


def _check_set_name(result_set: str) -> str:
    if not result_set or "/" in result_set or result_set.startswith("."):
        raise ValueError(f"result_set={result_set!r} is not a plain folder name (no '/', no leading '.')")
    return result_set


def summary_path(chapter: str, result_set: str) -> Path:
    """``<cache>/summaries/<result_set>/<chapter>.json``."""
    return cache_root() / "summaries" / _check_set_name(result_set) / f"{chapter}.json"


def metric_entry(per_norm: dict[str, dict[str, Any]], *, p_value: float | None, test: str, higher_means: str,
                 description: str, comparison: str, unit: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """One metric in the stable report shape.

    Args:
        per_norm: norm -> ``{"mean": float, "ci95": [lo, hi], "n": int}`` (see ``stats.mean_ci``).
        p_value: of the BN vs no-BN comparison (None if not tested).
        test: name of the test behind ``p_value``.
        higher_means: what a larger value means, e.g. "more memorization".
        description: one sentence saying exactly what is measured.
        comparison: ``same_schedule`` or ``matched_fit`` (and how the fit was matched, in description).
        unit: what ``n`` counts ("models", "seeds", "data draws", "examples", ...); the report falls back
            to ``description`` where it is absent.
        extra: further fields kept as given (``verdict``, ``detectable_difference``, ``p_value_holm``,
            ``difference`` = ``{"mean", "ci95", "n"}`` of BN - no-BN, ``bounds`` = ``[lo, hi]``).
    """
    entry = {**per_norm, "p_value": None if p_value is None else float(p_value), "test": test,
             "higher_means": higher_means, "description": description, "comparison": comparison, **extra}
    if unit is not None:
        entry["unit"] = unit
    return entry


def write_summary(chapter: str, metrics: dict[str, dict[str, Any]], config: dict[str, Any],
                  result_set: str | None = None) -> Path:
    """Store a chapter's headline metrics (``metric_entry`` values) with the config that produced them.

    The set is ``result_set`` if given, else ``$BNLIB_RESULT_SET`` (set by ``book.execute``), else
    ``<profile>-<hash of config>``: a run outside ``python -m bnlib`` never overwrites the book's numbers.
    """
    if result_set is None:
        result_set = os.environ.get(RESULT_SET_ENV) or \
            f"{config.get('profile', 'custom')}-{config_hash(config)[:8]}"
    path = summary_path(chapter, result_set)
    atomic_write_json(path, {"chapter": chapter, "metrics": metrics, "config": config, "result_set": result_set,
                             "bnlib_version": __version__})
    return path


def result_sets() -> list[str]:
    """Names of the result sets with at least one summary, most recently written first."""
    folder = cache_root() / "summaries"
    if not folder.exists():
        return []
    newest = {d.name: max((p.stat().st_mtime for p in d.glob("*.json")), default=None) for d in folder.iterdir()
              if d.is_dir()}
    return sorted((name for name, time in newest.items() if time is not None), key=lambda n: -newest[n])


def read_summaries(result_set: str | None = None) -> dict[str, dict[str, Any]]:
    """The chapter summaries of one result set: chapter -> stored summary.

    Args:
        result_set: the set to read; None: ``$BNLIB_RESULT_SET`` if set (inside a book kernel), else the
            most recently written set.
    """
    if result_set is None:
        result_set = os.environ.get(RESULT_SET_ENV) or next(iter(result_sets()), None)
        if result_set is None:
            return {}
    folder = summary_path("_", result_set).parent
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}
