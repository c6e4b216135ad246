"""Tests never touch the user's cache or build: both point into a per-session temporary folder."""

import os
import tempfile
from pathlib import Path

_session = Path(tempfile.mkdtemp(prefix="bnlib-tests-"))
os.environ["BNLIB_CACHE"] = str(_session / "cache")
os.environ["BNLIB_BUILD"] = str(_session / "build")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from bnlib import config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smoke_site() -> Path:
    """Every chapter executed at the smoke profile and the book built strictly (warnings are errors,
    nitpicky references), ONCE per test session; returns the site's ``html`` folder. Shared by the
    chapter test and the browser test."""
    from bnlib import book

    return book.book("smoke", build_dir=Path(os.environ["BNLIB_BUILD"]), strict=True, root=ROOT, progress=False)


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke-profile experiment config, on the CPU."""
    return config.load("smoke", device="cpu")
