import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def linted() -> list[str]:
    """What `make lint` checks: the package, the tests, the benchmarks and every notebook (chapters and pages)."""
    folders = [name for name in ("bnlib", "tests", "benchmarks", "chapters") if (ROOT / name).is_dir()]
    return folders + sorted(path.name for path in ROOT.glob("*.ipynb"))


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    completed = subprocess.run([str(ruff), "check", *linted()], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_make_lint_checks_what_this_test_checks():
    makefile = (ROOT / "Makefile").read_text()
    assert "LINTED := bnlib tests benchmarks chapters $(wildcard *.ipynb)" in makefile
    assert "ruff check $(LINTED)" in makefile
