"""What every chapter notebook does, in one place: set-up from its parameters cell, the parameter table, glue,
interval text, Markdown tables and the chapter's summary.

A chapter notebook reads as narrative + a call + a figure::

    from bnlib import chapter
    _names_before = set(globals())
    # parameters cell (papermill)
    ch = chapter.start("memorization", globals(), _names_before)   # validates, shows the parameter table
    cfg, params = ch.cfg, ch.params
    ...
    ch.glue(n_pools=len(cfg.pools), canary_rate=0.04)              # values the prose quotes
    ch.finish(metrics)                                             # the chapter's summary (report, landing page)

One convention for every chapter: its module (``CHAPTER_MODULES``) holds a frozen dataclass ``ChapterParams``
(the chapter's own parameters, beside :class:`bnlib.config.ExperimentConfig`) and ``check_config(cfg, params)``,
the cross-checks that fail before any long work.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, report, results

# chapter (notebook name) -> module of bnlib with its ChapterParams and check_config (None: the experiment config only)
CHAPTER_MODULES: dict[str, str | None] = {
    "data_and_models": None,
    "memorization": "memorization",
    "influence": "influence",
    "membership_inference": "mia",
    "theory": "theory",
    "ablations": "ablations",
    "what_to_do": "dp",
}

MIN_INTERVAL_REPLICATES = 3  # below this an interval is not printed (it would not mean anything): "2 runs"


def module_of(name: str):
    """The bnlib module of chapter ``name`` (None for a chapter with the experiment config only)."""
    if name not in CHAPTER_MODULES:
        raise ValueError(f"Unknown chapter {name!r}; allowed: {', '.join(map(repr, CHAPTER_MODULES))}.")
    module = CHAPTER_MODULES[name]
    return None if module is None else importlib.import_module(f"bnlib.{module}")


def params_class(name: str) -> type | None:
    """The ``ChapterParams`` dataclass of chapter ``name`` (None: it has no parameters of its own)."""
    module = module_of(name)
    return None if module is None else module.ChapterParams


def accepted_parameters(name: str) -> set[str]:
    """Every parameter chapter ``name`` accepts: ``profile``, the experiment config's and its own."""
    names = {"profile"} | {f.name for f in dataclasses.fields(config.ExperimentConfig)}
    extras = params_class(name)
    return names | ({f.name for f in dataclasses.fields(extras)} if extras else set())


@dataclass
class Chapter:
    """A running chapter: its validated configuration, its own parameters and its start time."""

    name: str
    cfg: Any
    params: Any = None
    started: float = field(default_factory=time.time)

    @property
    def settings(self) -> dict[str, Any]:
        """Every parameter of the run, as stored with its summary."""
        own = dataclasses.asdict(self.params) if self.params is not None else {}
        return {**self.cfg.to_dict(), **own}

    def parameter_table(self, shown: Sequence[str] | None = None) -> str:
        """Markdown table of the run's parameters (``shown``: these names only, in this order)."""
        settings = self.settings
        names = list(settings) if shown is None else list(shown)
        return markdown_table(("parameter", "value"), ((f"`{k}`", f"`{settings[k]}`") for k in names))

    def glue(self, **values: Any) -> None:
        """myst-nb ``glue`` every value under its keyword, without displaying it (the prose quotes it)."""
        glue_values(values)

    def elapsed(self) -> float:
        return time.time() - self.started

    def finish(self, metrics: Mapping[str, Mapping[str, Any]]) -> Path:
        """Store the chapter's headline metrics (``results.metric_entry`` values) with its settings."""
        return results.write_summary(self.name, dict(metrics), self.settings)

    def glue_timing(self, **seconds: float) -> None:
        """Glue ``chapter_seconds``, ``profile_name`` and each ``<key>`` of ``seconds`` rounded (e.g.
        ``seconds_population=123.4``)."""
        self.glue(chapter_seconds=round(self.elapsed()), profile_name=self.cfg.profile,
                  **{key: round(value) for key, value in seconds.items()})


def start(name: str, namespace: Mapping[str, Any], names_before: set[str], show: bool = True,
          shown: Sequence[str] | None = None) -> Chapter:
    """Validate the parameters a notebook defined (its parameters cell and what papermill injected) and show them.

    Args:
        name: the chapter (a key of ``CHAPTER_MODULES``).
        namespace: the notebook's ``globals()``.
        names_before: ``set(globals())`` taken just before the parameters cell, so that any name the parameters
            cell or papermill added is a parameter (an unknown one is an error, not silently ignored).
        show: display the parameter table.
        shown: the parameters the table lists (None: all).

    Raises:
        ValueError: naming the bad parameter and what is allowed, before any long work.
    """
    module = module_of(name)
    overrides = config.notebook_parameters(dict(namespace), names_before)
    if module is None:
        chapter = Chapter(name, config.load(**overrides))
    else:
        cfg, params = config.load(extras=module.ChapterParams, **overrides)
        module.check_config(cfg, params)
        chapter = Chapter(name, cfg, params)
    if show:
        from IPython.display import Markdown, display

        display(Markdown(chapter.parameter_table(shown)))
    return chapter


def glue_values(values: Mapping[str, Any]) -> None:
    """myst-nb ``glue`` of every ``name: value`` pair, not displayed."""
    from myst_nb import glue

    for key, value in values.items():
        glue(key, value, display=False)


def interval(summary: Mapping[str, Any], number_format: str = ".3f", unit: str = "runs") -> str:
    """``mean [low, high]`` of a ``stats.mean_ci``-shaped summary; with fewer than ``MIN_INTERVAL_REPLICATES``
    replicates the interval means nothing, so the text is ``mean (2 runs)`` instead (``unit`` names them)."""
    n = summary.get("n")
    if n == 0:
        return f"– (no {unit})"
    mean = f"{summary['mean']:{number_format}}"
    if n is not None and n < MIN_INTERVAL_REPLICATES:
        return f"{mean} ({report.count_text(n, {'unit': unit})})"
    low, high = summary["ci95"]
    return f"{mean} [{low:{number_format}}, {high:{number_format}}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: ``header`` names the columns; each row's cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the parameters cell
# Papermill reads a chapter's parameters from its cell tagged "parameters", so every chapter must declare each
# parameter its configuration accepts. The cell is generated from the dataclasses (one source: the field's doc
# and allowed values), and a test checks that every chapter's cell is the generated one.

PARAMETERS_HEADER = ('# Papermill parameters, generated from bnlib\'s configuration (python -m bnlib params {name} '
                     '--write-cell).\n# None means "the profile\'s default": python -m bnlib params {name} lists them.')


def _comment(spec: dataclasses.Field) -> str:
    doc = spec.metadata.get("doc", "")
    choices = spec.metadata.get("choices")
    listed = "tuple" in str(spec.type)
    if choices:
        doc += ("; comma-separated, of: " if listed else ": ") + " | ".join(map(str, choices))
    elif listed:
        doc += "; comma-separated"
    if "=" in doc:  # papermill would read "name = value  # a = b" as a value
        raise ValueError(f"The doc of parameter {spec.name!r} contains '=', which papermill cannot read in a "
                         f"comment: {doc!r}")
    return doc


def parameters_cell(name: str) -> str:
    """The source of chapter ``name``'s parameters cell: ``profile = "quick"``, then every parameter of the
    experiment config and of the chapter's own ``ChapterParams`` as ``name = None  # doc: allowed values``."""
    specs = [f for f in dataclasses.fields(config.ExperimentConfig) if f.name != "profile"]
    extras = params_class(name)
    lines = [PARAMETERS_HEADER.format(name=name),
             f'profile = "quick"  # {" | ".join(config.PROFILE_NAMES)}']
    lines += [f"{spec.name} = None  # {_comment(spec)}" for spec in specs]
    if extras is not None:
        lines.append("# the chapter's own")
        lines += [f"{spec.name} = None  # {_comment(spec)}" for spec in dataclasses.fields(extras)]
    return "\n".join(lines)


def write_parameters_cell(name: str, root: Path = results.REPO_ROOT) -> bool:
    """Rewrite chapter ``name``'s parameters cell with :func:`parameters_cell` (a no-op if it is already so).
    Returns whether the notebook changed."""
    import json

    path = root / "chapters" / f"{name}.ipynb"
    notebook = json.loads(path.read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    text = parameters_cell(name)
    if "".join(cell["source"]) == text:
        return False
    lines = text.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    results.atomic_write_bytes(path, (json.dumps(notebook, indent=1, ensure_ascii=False) + "\n").encode())
    return True
