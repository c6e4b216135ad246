"""Tests and benchmarks use bnlib's public surface: no name that starts with ``_`` from another module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_test_or_benchmark_reaches_into_a_private_name_of_bnlib():
    import bnlib

    modules = {path.stem for path in (ROOT / "bnlib").rglob("*.py")} | {"bnlib", "persample"}
    offenders = []
    for path in [*(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnlib"):
                offenders += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id in modules:
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert bnlib.__version__ and not offenders, "\n".join(offenders)
