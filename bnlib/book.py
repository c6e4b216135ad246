"""Execute chapter notebooks with papermill and build the Jupyter Book website from the executed copies.

Source notebooks in ``chapters/`` carry no outputs. ``execute`` writes executed copies to
``<build>/executed/``; ``build`` stages the book (configs, markdown pages, executed notebooks) in
``<build>/book_src/`` and runs Jupyter Book 1.x with ``execute_notebooks: off`` into ``<build>/html``.
An executed copy is reused when its fingerprint (source notebook, parameters, bnlib's code) matches,
so re-running ``make book`` with nothing changed takes seconds; trained models live in the result
cache and are never retrained for a re-execution.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import yaml

from .results import REPO_ROOT, cache_root

BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib")


def default_build_dir() -> Path:
    return Path(os.environ.get("BNLIB_BUILD", REPO_ROOT / "_build"))


def toc_documents(root: Path = REPO_ROOT) -> list[str]:
    """Documents of ``_toc.yml`` in reading order (paths without suffix, relative to ``root``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    documents = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                documents.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return documents


def notebook_documents(root: Path = REPO_ROOT) -> list[str]:
    """Notebook documents of the toc, chapters first and the landing page (which reads their results) last."""
    documents = [d for d in toc_documents(root) if (root / f"{d}.ipynb").exists()]
    landing = toc_documents(root)[0]
    return [d for d in documents if d != landing] + [d for d in documents if d == landing]


def chapter_names(root: Path = REPO_ROOT) -> list[str]:
    return [Path(d).name for d in notebook_documents(root)]


def resolve_chapter(name: str, root: Path = REPO_ROOT) -> str:
    """Map a chapter name (``memorization``) or path to its toc document; error lists the allowed names."""
    documents = notebook_documents(root)
    for document in documents:
        if name in (document, Path(document).name, f"{document}.ipynb"):
            return document
    raise ValueError(f"Unknown chapter {name!r}; allowed values: {', '.join(Path(d).name for d in documents)}.")


def declared_parameters(document: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Parameters declared in the notebook's ``parameters`` cell (papermill's own inspection)."""
    import papermill

    return papermill.inspect_notebook(str(root / f"{document}.ipynb"))


def check_parameters(document: str, parameters: dict[str, Any], root: Path = REPO_ROOT) -> None:
    """Fail before any kernel starts if a parameter name is not declared by the chapter."""
    declared = declared_parameters(document, root)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for chapter {Path(document).name!r}; "
            f"allowed parameters: {', '.join(sorted(declared))}."
        )


def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "bnlib").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def fingerprint(document: str, parameters: dict[str, Any], root: Path = REPO_ROOT) -> str:
    """Hash of what an executed copy depends on: the notebook, its parameters, bnlib's code, the cache
    location and, for the landing page (which tabulates every chapter), the chapters' summaries."""
    digest = hashlib.sha256((root / f"{document}.ipynb").read_bytes())
    if document == toc_documents(root)[0]:
        for path in sorted((cache_root() / "summaries").glob("*.json")):
            digest.update(path.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    digest.update(_code_fingerprint().encode())
    digest.update(os.environ.get("BNLIB_CACHE", "").encode())
    return digest.hexdigest()[:20]


def executed_path(document: str, build_dir: Path) -> Path:
    return build_dir / "executed" / f"{document}.ipynb"


@contextlib.contextmanager
def _inline_figures() -> Iterator[None]:
    """Let the kernel papermill starts draw into the notebook: it inherits our environment, and an
    ``MPLBACKEND=Agg`` there (usual on headless machines; the tests set it) would silently drop every figure."""
    previous = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MPLBACKEND"]
        else:
            os.environ["MPLBACKEND"] = previous


def execute(document: str, parameters: dict[str, Any], build_dir: Path | None = None, force: bool = False,
            root: Path = REPO_ROOT, progress: bool = True) -> tuple[Path, bool]:
    """Execute one notebook with papermill (unless an up-to-date executed copy exists).

    Returns:
        (path of the executed notebook, whether it was executed now).
    """
    import papermill

    build_dir = build_dir or default_build_dir()
    check_parameters(document, parameters, root)
    output = executed_path(document, build_dir)
    stamp = fingerprint(document, parameters, root)
    if not force and output.exists():
        previous = nbformat.read(output, as_version=4).metadata.get("bnlib", {})
        if previous.get("fingerprint") == stamp and previous.get("status") == "ok":
            return output, False
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.running.ipynb")
    start = time.time()
    with _inline_figures():
        papermill.execute_notebook(
            str(root / f"{document}.ipynb"), str(temporary), parameters=parameters,
            cwd=str((root / document).parent), progress_bar=progress, kernel_name="python3",
        )
    notebook = nbformat.read(temporary, as_version=4)
    notebook.metadata["bnlib"] = {"fingerprint": stamp, "status": "ok", "parameters": parameters,
                                  "seconds": round(time.time() - start, 1)}
    nbformat.write(notebook, temporary)
    os.replace(temporary, output)
    return output, True


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def without_widgets(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop ipywidgets state and widget outputs: myst-nb would load the widget JavaScript from a CDN
    for them, and the website must work offline. Chapters give each live widget a static fallback."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
    return notebook


def stage(build_dir: Path, root: Path = REPO_ROOT) -> Path:
    """Copy book configuration, markdown pages and executed notebooks into ``build_dir/book_src``."""
    source = build_dir / "book_src"
    source.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, source / name)
    for document in toc_documents(root):
        target = source / document
        target.parent.mkdir(parents=True, exist_ok=True)
        if (root / f"{document}.md").exists():
            shutil.copy2(root / f"{document}.md", target.with_suffix(".md"))
        else:
            executed = executed_path(document, build_dir)
            if not executed.exists():
                raise FileNotFoundError(f"Chapter {document!r} has not been executed: run "
                                        f"`python -m bnlib run {Path(document).name}` first.")
            nbformat.write(without_widgets(nbformat.read(executed, as_version=4)), target.with_suffix(".ipynb"))
    for folder in ("images",):
        if (root / folder).is_dir():
            shutil.copytree(root / folder, source / folder, dirs_exist_ok=True)
    return source


def build(build_dir: Path | None = None, strict: bool = False, root: Path = REPO_ROOT) -> Path:
    """Stage and build the website; returns ``build_dir/html``. ``strict``: warnings are errors."""
    build_dir = (build_dir or default_build_dir()).resolve()
    source = stage(build_dir, root)
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(source),
               "--path-output", str(build_dir / "site"), "--builder", "html"]
    if strict:
        command += ["--warningiserror", "--nitpick", "--keep-going"]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed:\n{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}")
    html = build_dir / "html"
    if html.is_symlink() or html.is_file():
        html.unlink()
    elif html.exists():
        shutil.rmtree(html)
    shutil.copytree(build_dir / "site" / "_build" / "html", html)
    return html


def book(profile: str = "quick", build_dir: Path | None = None, force: bool = False, strict: bool = False,
         root: Path = REPO_ROOT, progress: bool = True) -> Path:
    """Execute every notebook of the toc at ``profile`` (reusing up-to-date copies), then build the site."""
    build_dir = build_dir or default_build_dir()
    for document in notebook_documents(root):
        parameters = {"profile": profile} if "profile" in declared_parameters(document, root) else {}
        start = time.time()
        _, ran = execute(document, parameters, build_dir, force=force, root=root, progress=progress)
        status = f"executed in {time.time() - start:.0f} s" if ran else "up to date"
        print(f"[bnlib] {document}: {status}", flush=True)
    return build(build_dir, strict=strict, root=root)
