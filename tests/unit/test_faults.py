"""tests/faults.py names real tests, and `pytest -m fault` selects exactly those."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from faults import FAULT_TESTS, FAULTS

REPO = Path(__file__).resolve().parents[2]


def test_every_fault_names_tests_that_exist() -> None:
    missing = []
    for test in sorted(FAULT_TESTS):
        path, name = test.split("::")
        source = REPO / path
        defined = {n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef)} \
            if source.exists() else set()
        if name not in defined:
            missing.append(test)
    assert missing == []
    assert all(FAULTS.values())


def test_the_marker_selects_the_fault_suite() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "fault", "--collect-only", "-q", "-p", "no:randomly"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    selected = {line.split("[", 1)[0] for line in out.stdout.splitlines() if "::" in line}
    assert selected == FAULT_TESTS
