"""Result cache keyed by a hash of the full configuration; atomic writes; chapter summaries.

Layout (under ``cache_root()``, default ``_build/cache``, or ``$BNLIB_CACHE``)::

    <kind>/<hash>/config.json        the configuration, code modules and package version behind the entry
    <kind>/<hash>/<name>.pt          tensors / plain Python values, read with weights_only=True
    summaries/<chapter>.json         headline metrics of a chapter (read by ``python -m bnlib report``)

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
# the entry. Modules that only move bytes (this one, config validation, plots) are not part of any key.
PACKAGE_ROOT = Path(__file__).resolve().parent
# Modules that never decide a stored value: caching itself, validation messages, figures, the book.
NOT_DECIDING = ("__init__.py", "__main__.py", "results.py", "config.py", "plots.py", "book.py", "report.py",
                "cli.py")


def _imported_modules(path: Path, root: Path) -> set[str]:
    """bnlib modules that ``path`` imports relatively (``from . import a``, ``from .b import c``), as paths
    under ``root``: ``a.py`` for a module, ``b`` for a subpackage folder."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                target = base.joinpath(*name.split("."))
                if target.is_dir():
                    found.add(str(target.relative_to(root)))
                elif target.with_suffix(".py").is_file():
                    found.add(str(target.with_suffix(".py").relative_to(root)))
    return found


def code_of(module: str, root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """``module`` (``"zoo"``, or ``"persample"`` for a subpackage) and every bnlib module it imports,
    directly or not, except ``NOT_DECIDING``: the code whose source goes into the key of what it computes."""
    start = module if (root / module).is_dir() else f"{module}.py"
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            todo += [m for m in _imported_modules(file, root) if m not in seen]
    return tuple(sorted(seen - set(NOT_DECIDING)))


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

def summary_path(chapter: str) -> Path:
    return cache_root() / "summaries" / f"{chapter}.json"


def metric_entry(per_norm: dict[str, dict[str, Any]], *, p_value: float | None, test: str, higher_means: str,
                 description: str, comparison: str) -> dict[str, Any]:
    """One metric in the stable report shape.

    Args:
        per_norm: norm -> ``{"mean": float, "ci95": [lo, hi], "n": int}`` (see ``stats.mean_ci``).
        p_value: of the BN vs no-BN comparison (None if not tested).
        test: name of the test behind ``p_value``.
        higher_means: what a larger value means, e.g. "more memorization".
        description: one sentence saying exactly what is measured.
        comparison: ``same_schedule`` or ``matched_fit`` (and how the fit was matched, in description).
    """
    return {**per_norm, "p_value": None if p_value is None else float(p_value), "test": test,
            "higher_means": higher_means, "description": description, "comparison": comparison}


def write_summary(chapter: str, metrics: dict[str, dict[str, Any]], config: dict[str, Any]) -> Path:
    """Store a chapter's headline metrics (``metric_entry`` values) with the config that produced them."""
    path = summary_path(chapter)
    atomic_write_json(path, {"chapter": chapter, "metrics": metrics, "config": config,
                             "bnlib_version": __version__})
    return path


def read_summaries() -> dict[str, dict[str, Any]]:
    """All chapter summaries present: chapter -> stored summary."""
    folder = cache_root() / "summaries"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}
