import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    folders = [name for name in ("bnlib", "tests", "benchmarks") if (ROOT / name).is_dir()]
    completed = subprocess.run([str(ruff), "check", *folders], cwd=ROOT,
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
