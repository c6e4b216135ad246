"""Execute chapter notebooks with papermill and build the Jupyter Book website from the executed copies.

Source notebooks in ``chapters/`` carry no outputs. ``execute`` writes executed copies to
``<build>/executed/<result set>/``, one folder per (profile, parameters) (see ``results.result_set_name``):
the book's set is named by its profile, a run at other parameters lands beside it and never over it.
``build`` stages the book (configs, markdown pages, the executed notebooks of one set, each chapter with a
re-run box and a link to its data) in ``<build>/book_src/`` and runs Jupyter Book 1.x with
``execute_notebooks: off`` into ``<build>/html``; ``<build>/book.json`` records the set it was built from.
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

from . import figures, results
from .results import REPO_ROOT

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


def is_result_page(document: str, root: Path = REPO_ROOT) -> bool:
    """Whether a notebook tabulates the chapters' results (the landing page, "All measurements") rather
    than measuring: it declares no ``profile`` parameter and is executed after every chapter."""
    return "profile" not in declared_parameters(document, root)


def notebook_documents(root: Path = REPO_ROOT) -> list[str]:
    """Notebook documents of the toc, chapters first and the result pages (which read them) last."""
    documents = [d for d in toc_documents(root) if (root / f"{d}.ipynb").exists()]
    pages = {d: is_result_page(d, root) for d in documents}
    return [d for d in documents if not pages[d]] + [d for d in documents if pages[d]]


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


def default_profile(document: str, root: Path = REPO_ROOT) -> str | None:
    """The default of a chapter's ``profile`` parameter (None for a result page)."""
    spec = declared_parameters(document, root).get("profile")
    return None if spec is None else str(spec["default"]).strip("\"'")


def book_parameters(document: str, profile: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The parameters the book gives a notebook: ``{"profile": profile}`` for a chapter, none for a result page."""
    return {} if is_result_page(document, root) else {"profile": profile}


def run_result_set(document: str, parameters: dict[str, Any], root: Path = REPO_ROOT) -> str:
    """The result set a chapter run belongs to: its profile (given or the notebook's default) for the book's
    parameters, else ``<profile>-<hash>``."""
    profile = str(parameters.get("profile") or default_profile(document, root) or "quick")
    return results.result_set_name(profile, parameters)


BOOK_RECORD = "book.json"


def built_result_set(build_dir: Path | None = None) -> str | None:
    """The result set the last ``book`` in ``build_dir`` was built from (None if no book was built there)."""
    record = (build_dir or default_build_dir()) / BOOK_RECORD
    return json.loads(record.read_text())["result_set"] if record.exists() else None


def code_fingerprint(package: Path = REPO_ROOT / "bnlib") -> str:
    """Hash of every source file of bnlib, subpackages included (``persample/``), named by its path in it."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def fingerprint(document: str, parameters: dict[str, Any], root: Path = REPO_ROOT,
                result_set: str = "") -> str:
    """Hash of what an executed copy depends on: the notebook, its parameters and result set, bnlib's code,
    the cache location and, for a result page (which tabulates every chapter), the set's summaries."""
    digest = hashlib.sha256((root / f"{document}.ipynb").read_bytes())
    if is_result_page(document, root):
        for path in sorted(results.summary_path("_", result_set).parent.glob("*.json")):
            digest.update(path.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    digest.update(result_set.encode())
    digest.update(code_fingerprint().encode())
    digest.update(os.environ.get("BNLIB_CACHE", "").encode())
    return digest.hexdigest()[:20]


def executed_path(document: str, build_dir: Path, result_set: str) -> Path:
    return build_dir / "executed" / result_set / f"{document}.ipynb"


def figures_path(document: str, build_dir: Path, result_set: str) -> Path:
    """The records of the figures an executed copy shows (``figures.capture_figures``), beside it."""
    return executed_path(document, build_dir, result_set).with_suffix(".figures.json")


@contextlib.contextmanager
def _kernel_environment(**variables: str) -> Iterator[None]:
    """Environment for the kernel papermill starts (it inherits ours), restored afterwards. Used for
    ``MPLBACKEND`` (an ``Agg`` there, usual on headless machines, would silently drop every figure), the
    result set the run writes its summary into, and the build folder the result pages read figures from."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def remove_stale_runs(output: Path) -> None:
    """Delete what killed runs left beside ``output`` (``.<name>.<pid>.running.ipynb`` and its
    ``.figures.json``, whose process is gone)."""
    for leftover in [*output.parent.glob(f".{output.name}.*.running.ipynb"),
                     *output.parent.glob(f".{output.name}.*.running.figures.json")]:
        pid = leftover.name[len(output.name) + 2:].split(".")[0]
        alive = False
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                alive = int(pid) != os.getpid()
            except OSError:
                alive = False
        if not alive:
            leftover.unlink(missing_ok=True)


def execute(document: str, parameters: dict[str, Any], build_dir: Path | None = None, force: bool = False,
            root: Path = REPO_ROOT, progress: bool = True, result_set: str | None = None) -> tuple[Path, bool]:
    """Execute one notebook with papermill (unless an up-to-date executed copy exists).

    Args:
        result_set: where the executed copy and the chapter's summary go; None: the run's own set
            (``run_result_set``) for a chapter, the last built book's set (else ``quick``) for a result page.
    Returns:
        (path of the executed notebook, whether it was executed now).
    """
    import papermill

    build_dir = (build_dir or default_build_dir()).resolve()
    check_parameters(document, parameters, root)
    if result_set is None:
        result_set = (built_result_set(build_dir) or "quick") if is_result_page(document, root) else \
            run_result_set(document, parameters, root)
    output = executed_path(document, build_dir, result_set)
    figure_file = figures_path(document, build_dir, result_set)
    stamp = fingerprint(document, parameters, root, result_set)
    remove_stale_runs(output)
    if not force and output.exists() and figure_file.exists():
        previous = nbformat.read(output, as_version=4).metadata.get("bnlib", {})
        if previous.get("fingerprint") == stamp and previous.get("status") == "ok":
            return output, False
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.running.ipynb")
    recorded = temporary.with_suffix(".figures.json")  # written by the kernel (figures.capture_figures)
    recorded.unlink(missing_ok=True)
    start = time.time()
    try:
        with _kernel_environment(MPLBACKEND="module://matplotlib_inline.backend_inline", BNLIB_BUILD=str(build_dir),
                                 **{results.RESULT_SET_ENV: result_set, figures.FIGURES_ENV: str(recorded)}):
            papermill.execute_notebook(
                str(root / f"{document}.ipynb"), str(temporary), parameters=parameters,
                cwd=str((root / document).parent), progress_bar=progress, kernel_name="python3",
            )
    except BaseException:
        if temporary.exists():  # keep the failed notebook for reading, under a name no later run trips on
            os.replace(temporary, output.with_suffix(".failed.ipynb"))
        recorded.unlink(missing_ok=True)
        raise
    notebook = nbformat.read(temporary, as_version=4)
    notebook.metadata["bnlib"] = {"fingerprint": stamp, "status": "ok", "parameters": parameters,
                                  "result_set": result_set, "seconds": round(time.time() - start, 1)}
    nbformat.write(notebook, temporary)
    if recorded.exists():
        os.replace(recorded, figure_file)
    else:  # the notebook showed no figure
        results.atomic_write_json(figure_file, [])
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


def glued_values(notebook: nbformat.NotebookNode) -> dict[str, Any]:
    """Every value a notebook glued for its prose (myst-nb ``glue``): name -> the value (numbers and
    strings as themselves, anything else as its text form)."""
    import ast

    values: dict[str, Any] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            record = output.get("metadata", {}).get("scrapbook", {})
            name = record.get("name")
            # glue(..., display=False) stores the value under its scrapbook prefix, a displayed one as text/plain
            data = output.get("data", {})
            text = data.get(record.get("mime_prefix", "") + "text/plain", data.get("text/plain"))
            if name is None or text is None:
                continue
            try:
                values[name] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[name] = text
    return values


def main_figure_output(notebook: nbformat.NotebookNode) -> tuple[int, int] | None:
    """Where an executed notebook shows its main figure: (cell index, output index) of the first PNG of a
    cell tagged ``main-figure``, else of the first PNG after a Markdown cell that says "main figure"; None
    if it has none."""
    def first_png(chosen) -> tuple[int, int] | None:
        for number, cell in chosen:
            for index, output in enumerate(cell.get("outputs", [])):
                if "image/png" in output.get("data", {}):
                    return number, index
        return None

    cells = list(enumerate(notebook.cells))
    tagged = first_png((n, c) for n, c in cells if "main-figure" in c.metadata.get("tags", []))
    if tagged is not None:  # the tag wins wherever the prose says "main figure"
        return tagged
    announced = next((n for n, c in cells if c.cell_type == "markdown" and "main figure" in c.source.lower()), None)
    return None if announced is None else first_png((n, c) for n, c in cells[announced:] if c.cell_type == "code")


def main_figure(document: str, build_dir: Path | None = None,
                result_set: str | None = None) -> tuple[bytes, dict[str, Any]] | None:
    """The main figure of an executed chapter (``main_figure_output``), for the landing page.

    Returns:
        (PNG bytes, the output's image metadata, e.g. ``{"width": 715}`` for a 2x PNG), or None if the
        chapter has not been executed for ``result_set`` or has no such figure.
    """
    import base64

    build_dir = build_dir or default_build_dir()
    path = executed_path(document, build_dir, result_set or built_result_set(build_dir) or "quick")
    if not path.exists():
        return None
    notebook = nbformat.read(path, as_version=4)
    where = main_figure_output(notebook)
    if where is None:
        return None
    output = notebook.cells[where[0]].outputs[where[1]]
    return base64.b64decode(output["data"]["image/png"]), dict(output.get("metadata", {}).get("image/png", {}))


FIGURE_MARK = figures.FIGURE_MARK  # key of a figure output's image metadata: its record's position


def figure_records(notebook: nbformat.NotebookNode, records: list[dict[str, Any]],
                   document: str) -> list[dict[str, Any]]:
    """The records of the figures an executed notebook showed (``figures.capture_figures``), each with where
    it is: the chapter, ``cell`` (index in ``notebook``), ``output`` (index in the cell), the cell's tags,
    and ``main`` (whether it is the page's main figure, ``main_figure_output``). A record whose output is
    not in the notebook (e.g. a figure drawn into a live widget) keeps ``cell`` None."""
    places: dict[int, tuple[int, int]] = {}
    for number, cell in enumerate(notebook.cells):
        for index, output in enumerate(cell.get("outputs", []) if cell.cell_type == "code" else []):
            mark = output.get("metadata", {}).get("image/png", {}).get(FIGURE_MARK)
            if mark is not None:
                places.setdefault(int(mark), (number, index))
    main = main_figure_output(notebook)
    linked = []
    for record in records:
        cell, output = places.get(int(record.get("position", -1)), (None, None))
        tags = list(notebook.cells[cell].metadata.get("tags", [])) if cell is not None else []
        linked.append({"chapter": Path(document).name, "document": document, **record, "cell": cell,
                       "output": output, "tags": tags, "main": cell is not None and (cell, output) == main})
    return linked


def data_file_name(document: str) -> str:
    return f"{Path(document).name}.data.json"


def rerun_commands(document: str, parameters: dict[str, Any]) -> list[str]:
    """The shell commands that re-run ``document`` at ``parameters``: ``python -m bnlib run`` and papermill."""
    import shlex

    name, flags = Path(document).name, " ".join(f"-p {k} {shlex.quote(str(v))}" for k, v in parameters.items())
    return [f"python -m bnlib run {name} {flags}".rstrip(),
            f"papermill {document}.ipynb {name}.out.ipynb --cwd {Path(document).parent} {flags}".rstrip()]


def rerun_box(document: str, parameters: dict[str, Any], result_set: str) -> str:
    """MyST Markdown of the box every chapter page gets: the commands for the parameters it was built
    with, and the link to the JSON behind its numbers (``data_file_name``, written beside the page)."""
    shown = ", ".join(f"`{k}={v}`" for k, v in parameters.items()) or "the notebook's defaults"
    commands = "\n".join(rerun_commands(document, parameters))
    return (f":::{{admonition}} Re-run this page, get its data\n:class: tip\n"
            f"Built with {shown} (result set `{result_set}`). Either command re-runs it; at other parameters "
            "the results land beside the book's, never over them.\n\n"
            f"```bash\n{commands}\n```\n\n"
            f"The numbers behind this page: {{download}}`{data_file_name(document)}` (the chapter's headline "
            "metrics with the configuration that produced them, every value quoted in the text, and under "
            "`figures` the plotted values of every figure).\n:::")


def _with_rerun_box(notebook: nbformat.NotebookNode, document: str, source: Path,
                    result_page: bool, shown_figures: list[dict[str, Any]]) -> nbformat.NotebookNode:
    """Write the page's data file beside it and link it: a chapter gets the re-run box after its first cell
    (its title); a result page (which has no parameters) a closing line."""
    from . import report

    meta = notebook.metadata.get("bnlib", {})
    result_set, parameters = meta.get("result_set", ""), meta.get("parameters", {})
    data: dict[str, Any] = {"document": document, "result_set": result_set, "parameters": parameters}
    if result_page:
        table = report.headline(results.read_summaries(result_set)) if result_set else {}
        data.update(metrics=json.loads(report.as_json(table)), forest_plot=report.forest_json(table))
    else:
        summary = results.summary_path(Path(document).name, result_set) if result_set else None
        data["summary"] = json.loads(summary.read_text()) if summary and summary.exists() else None
    data["glued"] = glued_values(notebook)
    if result_page:
        link = nbformat.v4.new_markdown_cell(f"*The numbers and the plotted values of this page (each figure's under "
                                             f"`figures`), as JSON: {{download}}`{data_file_name(document)}` "
                                             f"(result set `{result_set}`).*")
        notebook.cells.append(link)
    else:
        notebook.cells.insert(1, nbformat.v4.new_markdown_cell(rerun_box(document, parameters, result_set)))
    data["figures"] = figure_records(notebook, shown_figures, document)  # cells numbered as on the page
    (source / document).parent.mkdir(parents=True, exist_ok=True)
    results.atomic_write_json((source / document).with_name(data_file_name(document)), data)
    return notebook


def stage(build_dir: Path, root: Path = REPO_ROOT, result_set: str | None = None) -> Path:
    """Copy book configuration, markdown pages and the executed notebooks of ``result_set`` (default: the
    last built book's, else ``quick``) into ``build_dir/book_src``; each chapter gets its re-run box."""
    result_set = result_set or built_result_set(build_dir) or "quick"
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
            executed = executed_path(document, build_dir, result_set)
            if not executed.exists():
                raise FileNotFoundError(f"Chapter {document!r} has not been executed for result set {result_set!r}: "
                                        f"run `python -m bnlib book --profile {result_set}` first.")
            notebook = without_widgets(nbformat.read(executed, as_version=4))
            recorded = figures_path(document, build_dir, result_set)
            shown_figures = json.loads(recorded.read_text()) if recorded.exists() else []
            notebook = _with_rerun_box(notebook, document, source, is_result_page(document, root),
                                       shown_figures)
            nbformat.write(notebook, target.with_suffix(".ipynb"))
    for folder in ("images", "_static"):  # Jupyter Book loads every _static/*.css
        if (root / folder).is_dir():
            shutil.copytree(root / folder, source / folder, dirs_exist_ok=True)
    return source


def build(build_dir: Path | None = None, strict: bool = False, root: Path = REPO_ROOT,
          result_set: str | None = None) -> Path:
    """Stage and build the website; returns ``build_dir/html``. ``strict``: warnings are errors."""
    build_dir = (build_dir or default_build_dir()).resolve()
    source = stage(build_dir, root, result_set)
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
    """Execute every notebook of the toc at ``profile`` (reusing up-to-date copies), then build the site.
    The book's result set is named ``profile``; ``<build>/book.json`` records it for ``report``."""
    build_dir = (build_dir or default_build_dir()).resolve()
    result_set = results.result_set_name(profile)
    build_dir.mkdir(parents=True, exist_ok=True)
    results.atomic_write_json(build_dir / BOOK_RECORD, {"profile": profile, "result_set": result_set})
    for document in notebook_documents(root):
        start = time.time()
        _, ran = execute(document, book_parameters(document, profile, root), build_dir, force=force, root=root,
                         progress=progress, result_set=result_set)
        status = f"executed in {time.time() - start:.0f} s" if ran else "up to date"
        print(f"[bnlib] {document}: {status}", flush=True)
    return build(build_dir, strict=strict, root=root, result_set=result_set)
