"""No typed numbers or direction words in the chapters' prose: they come from the run (myst-nb glue).

Every markdown cell of every page is scanned for numerals and direction words outside math, code, MyST roles
(glue, cite, doc, eq, ...), directives' options, link targets and headings. Each hit must lie inside a phrase of
``ALLOWED`` (per page, each with the reason it is not a measurement); a new typed number fails this test.
"""

import re
from pathlib import Path

import nbformat
import pytest

from bnlib import book

ROOT = Path(__file__).resolve().parent.parent
DIRECTION_WORDS = ("more", "less", "exceeds", "exceed", "higher", "lower", "larger", "smaller", "fewer", "greater")
# a numeral that is not part of a name (A1, float64, x_2 are names), or a direction word
HIT = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*|\b(?:" + "|".join(DIRECTION_WORDS) + r")\b", re.IGNORECASE)

# Spans that are not prose: removed (replaced by spaces, so positions stay) before scanning.
NOT_PROSE = [
    re.compile(r"```.*?```", re.DOTALL),  # fenced code and directives
    re.compile(r"\$\$.*?\$\$", re.DOTALL),  # display math
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"\{[a-z:-]+\}`[^`]*`"),  # MyST roles: {glue:text}`key:.3f`, {cite}`key`, {doc}`x`, {eq}`x`
    re.compile(r"`[^`\n]*`"),  # inline code
    re.compile(r"^\s*#.*$", re.MULTILINE),  # headings
    re.compile(r"^\s*\d+\.\s", re.MULTILINE),  # numbered-list markers
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<[^>\n]+>"),  # HTML tags
    re.compile(r"^\s*:[a-z-]+:.*$", re.MULTILINE),  # directive options
    re.compile(r"\(\w[\w-]*\)="),  # MyST targets (label)=
]

# page -> phrases whose numerals or direction words are not measurements (why, in the comment).
ALLOWED: dict[str, list[str]] = {
    "*": [
        # the nominal level of every interval
        "95% CI", "95% confidence", "95% t interval", "95 % t-interval", "95% interval", "95% band",
        "CIFAR-10",  # a dataset's name
        "2-core CPU",  # the machine the quick profile is sized for
        # names of metrics: a rate in the name is part of what is measured, not a result
        "TPR at 0.1% and 1% FPR", "TPR at 0.1% FPR", "TPR at 1% FPR", "at 0.1% FPR", "at 1% FPR", "0.1% FPR",
        "1% FPR",
        # names of the influence definitions and of the theory's statements
        "Definition 1", "Definition 2", "Definition 3", "definition 1", "definitions 1 and 2", "Definitions 1 and 2",
        "Proposition 1.3", "Proposition 1",
        "substantially more than the same network without it",  # the paper's claim, quoted
        "significantly more exposed to membership-inference attacks",  # the paper's claim, quoted
        "80% power at the 5% level",  # the stated design of every detectable difference (verdict.py)
    ],
    "intro": [
        # the paper's claims, quoted
        "training examples more, and leak them", "training examples more** than the same network",
        "(ii) larger per-sample influence", "(iii) more successful membership-inference attacks",
        "right more often than the", "held-out ones?",  # the memorization chapter's question
    ],
    "all_measurements": [
        # how the page prints: the rules of bnlib.report, not measurements
        "With fewer than 3 replicates", "below 3 replicates", "[−1, 1]", "[0, 1]", "p < 0.05",
    ],
    "chapters/membership_inference": [
        "higher meaning", "one IN model fewer", "from the larger side", "does not exceed it",  # definitions
        "rounds to 1",  # arithmetic of the logit-scaled confidence
        "scores members *lower*",  # the leave-one-out bias argued in the text and measured (glued) beside it
        "AUC is higher than without normalization for",  # defines the glued count that follows
        "below about 64 shadow models",  # LiRA's authors' recommendation (literature)
        "issue 427",  # a link's text
        "is much smaller than the same-schedule one",  # a conditional reading rule
        "runs more models on more data",  # what the paper profile is
    ],
    "chapters/influence": [
        "outliers get a larger", "per-sample influence, measured through",  # the paper's claim, quoted
        "batch size 2",  # a case the tests cover
        "network has smaller inlier gradients",  # the mechanism the first figure shows
        "test that canaries have larger influence", "whether canaries have larger influence",  # the alternative
        "the network that fits faster shows a larger ratio",  # a conditional reading rule
    ],
    "chapters/theory": [
        "mean 0",  # assumptions A1, A2
        "can never exceed", "towards 0",  # mathematics of the toy model
        "3 to 40 samples", "from 4 to 512", "and 1, against",  # the ranges the tests draw instances from
        "(1 for a typical inlier",  # the unit of the measured a²
        "90 % of the canaries",  # the quantile shown (a choice of the page)
        "95 % CI", "95 % t-intervals",  # nominal levels
        "above or below 1", "ratio near 1",  # the toy's threshold of amplification
        # the null's prediction and the definition of the no-norm slope (issue 22's far-outlier check)
        "test against 0", "slope is 0 by definition", "predicts a slope of 0", "against 0,",
    ],
    "chapters/what_to_do": [
        "a larger batch",  # the name of a setting
        "both higher mean accuracy and lower mean leakage",  # the definition of the Pareto front
        "fewer noise levels, fewer models per setting",  # what the reduced grid is
    ],
    "chapters/data_and_models": [
        "28×28",  # Fashion-MNIST's image size, a fact of the files
        "8×8",  # load_digits' image size, a fact of the files
    ],
    "chapters/memorization": [
        "0/1 hit",  # the definition of a hit
    ],
    "chapters/ablations": [
        "hence fewer steps for larger batches",  # arithmetic: same epochs, larger batches
        "Large batches take fewer steps",  # the same arithmetic
        "involves fewer examples",  # a virtual batch is part of the batch, by definition
        "positive = less leakage", "positive = less memorization",  # the sign convention of a column
    ],
}


def prose(text: str) -> str:
    for pattern in NOT_PROSE:
        text = pattern.sub(lambda match: " " * len(match.group(0)), text)
    return text


def typed_hits(document: str, text: str) -> list[str]:
    """Hits in ``text`` (one markdown cell of ``document``) not covered by an allowed phrase."""
    cleaned = prose(text)
    covered = [(m.start(), m.end()) for phrase in ALLOWED.get(document, []) + ALLOWED.get("*", [])
               for m in re.finditer(r"\s+".join(map(re.escape, phrase.split())), cleaned)]  # across line breaks
    hits = []
    for match in HIT.finditer(cleaned):
        if not any(start <= match.start() and match.end() <= end for start, end in covered):
            context = cleaned[max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
            hits.append(f"{match.group(0)!r} in '…{' '.join(context.split())}…'")
    return hits


def markdown_cells(document: str) -> list[str]:
    path = ROOT / f"{document}.ipynb"
    if path.exists():
        return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    return [(ROOT / f"{document}.md").read_text()]


def test_the_scanner_finds_typed_numbers_and_skips_math_code_roles_and_headings():
    text = ("# Chapter 3\nBN memorizes more: 0.47 at $T=8$, `n = 4`, {glue:text}`auc:.2f`, {cite}`carlini2022`,\n"
            "```{figure} a1.png\n:width: 80%\n```\nthree times.")
    assert [h.split()[0] for h in typed_hits("x", text)] == ["'more'", "'0.47'"]
    ALLOWED["x"] = ["memorizes more"]
    try:
        assert [h.split()[0] for h in typed_hits("x", text)] == ["'0.47'"]
    finally:
        del ALLOWED["x"]


@pytest.mark.parametrize("document", book.toc_documents(ROOT))
def test_no_typed_numbers_or_direction_words_in_the_prose(document):
    hits = [hit for cell in markdown_cells(document) for hit in typed_hits(document, cell)]
    assert not hits, "typed in the prose (glue it from the run, or allow it with a reason):\n" + "\n".join(hits)
