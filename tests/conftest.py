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


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke-profile experiment config, on the CPU."""
    return config.load("smoke", device="cpu")
